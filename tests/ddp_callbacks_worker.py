"""Run weight-averaging callbacks on the toy module with N CPU processes (Lightning DDP, gloo); save the results.

Usage: python tests/ddp_callbacks_worker.py OUT.pt DEVICES GLOBAL_BATCH SETUP
SETUP: "swad+best" (SWAD and BestValidationWeights together), "swa", or "ema" (EMA of the module's `net`, with
SampleGrid writing a grid of the toy's "generated" images after each validation, under OUT's folder).
With DEVICES=2 each rank takes GLOBAL_BATCH/2 samples (Lightning's DistributedSampler deals indices r, r+2, ...),
so every step sees the same global batch as a single process with batch GLOBAL_BATCH.
"""

import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks import SWAD, BestValidationWeights  # noqa: E402
from callbacks.ema import EMA  # noqa: E402
from callbacks.sample_grid import SampleGrid  # noqa: E402
from lightning_modules.metrics import PerDomainMeans  # noqa: E402
from tests.toy import ScriptedLossModule  # noqa: E402

STEPS_PER_EPOCH = 5
LOSSES = [5, 4, 3, 2.0, 2.1, 2.2, 2.0, 2.5, 3.0, 9, 9, 9, 9, 9, 9, 9]


class SyncedToy(ScriptedLossModule):
    """The toy module plus a real, synced validation metric (per-domain sums gathered before dividing)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_metric = PerDomainMeans(2)
        self.real_losses = []

    def validation_step(self, batch, batch_idx):
        x, y = batch
        losses = ((self(x) - y) ** 2).squeeze(1)
        self.val_metric.update(losses, losses < 1.0, (y.squeeze(1) > 0).long())

    def on_validation_epoch_end(self):
        super().on_validation_epoch_end()
        out = self.val_metric.compute()
        self.val_metric.reset()
        if not self.trainer.sanity_checking:
            self.real_losses.append(out["loss"].tolist())
            self.log("val/real", out["loss"].nansum(), sync_dist=True)

    def generate(self, indices: list[int]) -> torch.Tensor:
        """SampleGrid's contract: deterministic "images" in [-1, 1], here the net's outputs on fixed inputs."""
        x = torch.stack([torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in indices])
        with torch.no_grad():
            return torch.tanh(self.net(x.view(-1, 4))).view(len(indices), 1, 4, 4)


class InOrderData(L.LightningDataModule):
    """Unshuffled data dealt to ranks in order (Lightning would shuffle a train loader it shards itself)."""

    def __init__(self, global_batch: int, devices: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(STEPS_PER_EPOCH * global_batch, 4, generator=g)
        self.train_set = TensorDataset(x, x @ torch.randn(4, 1, generator=g))
        self.val_set = TensorDataset(x[:12], self.train_set.tensors[1][:12])
        self.per_rank = global_batch // devices

    def _loader(self, dataset, batch_size):
        sampler = DistributedSampler(dataset, shuffle=False) if dist.is_initialized() else None
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler)

    def train_dataloader(self):
        return self._loader(self.train_set, self.per_rank)

    def val_dataloader(self):
        return self._loader(self.val_set, 3)


def main() -> None:
    out, devices, global_batch, setup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    L.seed_everything(0)
    module = SyncedToy(LOSSES)
    if setup == "ema":
        ema = EMA(decay=0.9)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp" if devices > 1 else "auto",
            max_steps=STEPS_PER_EPOCH * 4,
            callbacks=[ema, SampleGrid(num_samples=4)],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(Path(out).with_suffix("")),
        )
        trainer.fit(module, datamodule=InOrderData(global_batch, devices))
        if trainer.global_rank == 0:
            torch.save(
                {
                    "ema": {k: v.cpu() for k, v in ema.ema_state_dict.items()},
                    "variants": ema.weight_variants(module),
                    "params": [p.detach().cpu() for p in module.parameters()],
                    "global_step": trainer.global_step,
                    "real_losses": module.real_losses,
                },
                out,
            )
        return
    swad = SWAD() if setup == "swad+best" else SWAD(mode="swa", swa_start_step=12)
    best = BestValidationWeights(monitor="val/real", mode="min")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=STEPS_PER_EPOCH * 20,
        callbacks=[swad, best] if setup == "swad+best" else [swad],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=InOrderData(global_batch, devices))
    if trainer.global_rank == 0:
        torch.save(
            {
                "params": [p.detach().cpu() for p in module.parameters()],
                "accepted": swad.valley.accepted,
                "n_averaged": swad.n_averaged,
                "global_step": trainer.global_step,
                "real_losses": module.real_losses,
                "best_step": best.best_step,
                "best_state": best.best_state,
            },
            out,
        )


if __name__ == "__main__":
    main()
