"""A few training steps of DiffusionModule + TimestepMTL on N CPU processes (Lightning DDP, gloo).

Usage: python tests/ddp_mtl_worker.py OUT.pt DEVICES METHOD [STEPS]
METHOD ``nash`` re-solves its weights every 2 steps (``nash_update_every=2``): with 3 steps, steps 0 and 2 solve
and step 1 reuses the weights (one backward of the weighted loss instead of k per-cluster gradients).
The images, timesteps and noise of every sample are fixed in the dataset (a test subclass reads them instead of
drawing them), and laid out so that each rank's half of a global batch has the same number of samples per
timestep cluster. So one process with the global batch and two processes with half of it each see exactly the
same samples; the saved parameters must agree.
"""

import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.mtl import TimestepMTL  # noqa: E402
from lightning_modules.diffusion.module import DiffusionModule  # noqa: E402

GLOBAL_BATCH, K = 20, 5
NASH_UPDATE_EVERY = 2
# no mid-block attention: its key bias has an exactly-zero gradient, which Adam would turn into float noise
TINY_UNET = {"block_out_channels": [16, 32], "norm_num_groups": 8, "add_attention": False}


class FixedInputs(DiffusionModule):
    """Takes (x0, t, noise) from the batch instead of drawing t and noise."""

    def training_inputs(self, batch):
        x0, t, noise = batch
        return self.encode(x0), t, noise


class RecordGrads(L.Callback):
    """Keep the gradient the optimizer is about to apply, and the MTL weights in use, at every step (CPU)."""

    def __init__(self) -> None:
        self.grads, self.alphas = [], []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.grads.append(torch.cat([p.grad.detach().flatten().cpu() for p in params]))
        alpha = getattr(pl_module.loss_reducer, "alpha", None)  # NashMTL's weights (None otherwise)
        self.alphas.append(None if alpha is None else torch.as_tensor(alpha).detach().cpu().clone())


class FixedData(L.LightningDataModule):
    def __init__(self, devices: int, steps: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        n = GLOBAL_BATCH * steps
        x = torch.rand(n, 1, 8, 8, generator=g) * 2 - 1
        cluster = (torch.arange(n) // 2) % K  # rank r takes r, r+2, ...: equal cluster counts on both ranks
        t = cluster * 200 + torch.randint(0, 200, (n,), generator=g)
        noise = torch.randn(n, 1, 8, 8, generator=g)
        self.dataset = TensorDataset(x, t, noise)
        self.per_rank = GLOBAL_BATCH // devices

    def train_dataloader(self):
        sampler = DistributedSampler(self.dataset, shuffle=False) if dist.is_initialized() else None
        return DataLoader(self.dataset, batch_size=self.per_rank, sampler=sampler)


def main() -> None:
    out, devices, method = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    L.seed_everything(0)
    module = FixedInputs(input_shape=(1, 8, 8), unet=TINY_UNET, lr=1e-3)
    record = RecordGrads()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=steps,
        callbacks=[TimestepMTL(method=method, num_clusters=K, nash_update_every=NASH_UPDATE_EVERY), record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=FixedData(devices, steps))
    if trainer.global_rank == 0:
        torch.save(
            {
                "state": {k: v.cpu() for k, v in module.state_dict().items()},
                "global_step": trainer.global_step,
                "grads": record.grads,
                "alphas": record.alphas,
            },
            out,
        )


if __name__ == "__main__":
    main()
