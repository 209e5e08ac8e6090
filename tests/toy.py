"""A toy LightningModule whose validation loss follows a script, for testing averaging callbacks exactly."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class ScriptedLossModule(L.LightningModule):
    """Linear regression trained with SGD; logs `val/src_loss` from `val_losses` (one value per validation)."""

    def __init__(self, val_losses: list[float], lr: float = 0.05, with_bn: bool = False) -> None:
        super().__init__()
        self.val_losses = list(val_losses)
        self.lr = lr
        self.net = nn.Sequential(
            nn.Linear(4, 3), nn.BatchNorm1d(3) if with_bn else nn.Identity(), nn.Linear(3, 1)
        )
        self.n_val = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        self.log("val/src_loss", float(self.val_losses[min(self.n_val, len(self.val_losses) - 1)]))
        self.n_val += 1

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def toy_loaders(steps_per_epoch: int, batch_size: int = 8, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps_per_epoch * batch_size, 4, generator=g)
    y = x @ torch.randn(4, 1, generator=g) + 0.1 * torch.randn(len(x), 1, generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    val = DataLoader(TensorDataset(x[:8], y[:8]), batch_size=8)
    return train, val


class RecordIterates(Callback):
    """Store a CPU copy of every parameter after each optimizer step (iterate t = after step t)."""

    def __init__(self) -> None:
        self.iterates: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.iterates[trainer.global_step] = [p.detach().cpu().clone() for p in pl_module.parameters()]

    def mean(self, first: int, last: int) -> list[torch.Tensor]:
        steps = range(first, last + 1)
        return [
            torch.stack([self.iterates[s][i] for s in steps]).double().mean(0)
            for i in range(len(self.iterates[first]))
        ]
