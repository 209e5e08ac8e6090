"""Train SimCLR on fixed two-view digits with N CPU processes (Lightning DDP, gloo); save weights and step-0 losses.

Usage: python tests/ddp_simclr_worker.py OUT.pt DEVICES GLOBAL_BATCH [scorecl]
With DEVICES=2 each rank takes GLOBAL_BATCH/2 samples (DistributedSampler without shuffle deals r, r+2, ...), so
every step sees the same global batch as one process with GLOBAL_BATCH. The network has no BatchNorm (small_cnn and
SimCLR's projector), so the only cross-sample coupling is the NT-Xent negatives (and ScoreCL's weight normalisation).
"""

import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.scorecl import ScoreWeighting  # noqa: E402
from datamodules.ssl.datasets import digits_split  # noqa: E402
from lightning_modules.ssl.losses import nt_xent_per_pair  # noqa: E402
from lightning_modules.ssl.simclr import SimCLR  # noqa: E402

STEPS = 3


class FixedViews(Dataset):
    """Two deterministic views per digit: the image and a fixed noisy, shifted copy."""

    def __init__(self, n: int) -> None:
        x, y = digits_split(1200, 0)["train"]
        g = torch.Generator().manual_seed(0)
        self.x, self.y = x[:n], y[:n]
        self.x2 = (torch.roll(self.x, 1, dims=-1) + 0.2 * torch.rand(self.x.shape, generator=g)).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"views": [self.x[i], self.x2[i]], "raw_views": [self.x[i], self.x2[i]], "labels": self.y[i]}


class InOrderData(L.LightningDataModule):
    def __init__(self, global_batch: int, devices: int) -> None:
        super().__init__()
        self.data = FixedViews(STEPS * global_batch)
        self.batch_size = global_batch // devices
        self.input_shape = (1, 8, 8)

    def train_dataloader(self):
        sampler = DistributedSampler(self.data, shuffle=False) if dist.is_initialized() else None
        return DataLoader(self.data, batch_size=self.batch_size, sampler=sampler)

    def clean_train_dataloader(self, batch_size=64, shuffle=True, seed=0):
        x = self.data.x
        return DataLoader(
            list(zip(x, self.data.y, strict=True)),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(seed),
        )


class RecordingSimCLR(SimCLR):
    """SimCLR that keeps, at step 0, this process's per-pair losses and the local-negatives-only version."""

    def ssl_losses(self, feats, batch):
        out = super().ssl_losses(feats, batch)
        if self.global_step == 0:
            z1, z2 = self.projector(feats[0]), self.projector(feats[1])
            self.step0 = {
                "pair": out[0].detach().clone(),
                "local_only": nt_xent_per_pair(z1, z2, 0.2).detach(),
            }
        return out


def main() -> None:
    out, devices, global_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    use_scorecl = len(sys.argv) > 4 and sys.argv[4] == "scorecl"
    L.seed_everything(0)
    module = RecordingSimCLR(
        backbone="small_cnn",
        input_shape=(1, 8, 8),
        backbone_kwargs={"width": 8},
        proj_hidden_dim=32,
        proj_output_dim=16,
        optimizer="sgd",
        lr=0.5,
        weight_decay=0.0,
        scale_lr=False,
        warmup_epochs=0,
    )
    callbacks = []
    if use_scorecl:
        callbacks.append(ScoreWeighting(pretrain_steps=10, score_batch_size=32, net_kwargs={"width": 8}))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=STEPS,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=InOrderData(global_batch, devices))
    result = {"params": [p.detach().cpu() for p in module.parameters()], "step0": module.step0}
    if use_scorecl:
        result["weights"] = callbacks[0].last_weights.cpu()
    gathered = [None] * devices
    if devices > 1:
        dist.all_gather_object(gathered, result)
    else:
        gathered = [result]
    if trainer.global_rank == 0:
        torch.save(gathered, out)


if __name__ == "__main__":
    main()
