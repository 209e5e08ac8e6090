"""Train DenseCL (Hough pairing) on fixed two-view digits with N CPU processes (Lightning DDP, gloo); save the
queues, the queue pointer and the weights.

Usage: python tests/ddp_houghcl_worker.py OUT.pt DEVICES GLOBAL_BATCH
Rank r of R takes the r-th contiguous slice of each global batch, so the all-gathered keys arrive in the order of
one process on the global batch. small_cnn and the necks have no BatchNorm, so the only cross-sample coupling is
through the queues (and DDP's gradient averaging).
"""

import sys
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.ssl.datasets import digits_split  # noqa: E402
from lightning_modules.houghcl.module import DenseCLModule  # noqa: E402

STEPS = 3
QUEUE = 32


class FixedViews(Dataset):
    """Two deterministic 16x16 views per digit: the upsampled image and a shifted, noisy copy."""

    def __init__(self, n: int) -> None:
        x, y = digits_split(1200, 0)["train"]
        x = F.interpolate(x[:n], size=(16, 16), mode="bilinear")
        g = torch.Generator().manual_seed(0)
        self.x, self.y = x, y[:n]
        self.x2 = (torch.roll(x, 2, dims=-1) + 0.2 * torch.rand(x.shape, generator=g)).clamp(0, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"views": [self.x[i], self.x2[i]], "labels": self.y[i]}


class ContiguousSlices(Sampler):
    """Rank r gets samples [s*G + r*b, s*G + (r+1)*b) of global batch s (G = global batch, b = G / ranks)."""

    def __init__(self, n: int, global_batch: int, rank: int, ranks: int) -> None:
        self.n, self.g, self.rank, self.ranks = n, global_batch, rank, ranks

    def __iter__(self):
        b = self.g // self.ranks
        for s in range(self.n // self.g):
            yield from range(s * self.g + self.rank * b, s * self.g + (self.rank + 1) * b)

    def __len__(self) -> int:
        return self.n // self.ranks


class InOrderData(L.LightningDataModule):
    def __init__(self, global_batch: int, devices: int) -> None:
        super().__init__()
        self.data = FixedViews(STEPS * global_batch)
        self.global_batch, self.devices = global_batch, devices
        self.batch_size = global_batch // devices
        self.input_shape = (1, 16, 16)

    def train_dataloader(self):
        rank = dist.get_rank() if dist.is_initialized() else 0
        sampler = ContiguousSlices(len(self.data), self.global_batch, rank, self.devices)
        return DataLoader(self.data, batch_size=self.batch_size, sampler=sampler)


def main() -> None:
    out, devices, global_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    L.seed_everything(0)
    module = DenseCLModule(
        backbone="small_cnn",
        input_shape=(1, 16, 16),
        backbone_kwargs={"width": 8},
        proj_hidden_dim=32,
        proj_output_dim=16,
        pairing="hough",
        queue_size=QUEUE,
        base_momentum=0.9,
        optimizer="sgd",
        lr=0.5,
        weight_decay=0.0,
        scale_lr=False,
        warmup_epochs=0,
    )
    initial = module.queue_global.clone()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=InOrderData(global_batch, devices))
    result = {
        "initial": initial,
        "queue_global": module.queue_global.cpu(),
        "queue_dense": module.queue_dense.cpu(),
        "ptr": int(module.queue_ptr),
        "params": [p.detach().cpu() for p in module.parameters()],
        "momentum": [p.detach().cpu() for p in module.momentum_backbone.parameters()],
    }
    gathered = [None] * devices
    if devices > 1:
        dist.all_gather_object(gathered, result)
    else:
        gathered = [result]
    if trainer.global_rank == 0:
        torch.save(gathered, out)


if __name__ == "__main__":
    main()
