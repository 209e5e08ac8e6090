"""Metrics shared by several modules.

`PerDomainMeans` keeps per-domain sums (loss, correct predictions, sample count) as torchmetrics states with
sum reduction, so under DDP the numbers are gathered before they are divided: the per-domain means equal those of
one process that saw every sample.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


class PerDomainMeans(Metric):
    """Mean loss and accuracy per domain, from per-sample losses, predictions and domain indices."""

    full_state_update = False

    def __init__(self, num_domains: int) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.num_domains = num_domains
        self.add_state(
            "loss_sum", default=torch.zeros(num_domains, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("correct", default=torch.zeros(num_domains, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_domains, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, losses: torch.Tensor, correct: torch.Tensor, domains: torch.Tensor) -> None:
        """Add a batch: per-sample `losses`, per-sample `correct` (bool or 0/1) and integer `domains`."""
        domains = domains.long()
        if domains.numel() and (domains.min() < 0 or domains.max() >= self.num_domains):
            raise ValueError(
                f"domain index out of range [0, {self.num_domains}): {domains.unique().tolist()}"
            )
        self.loss_sum.index_add_(0, domains, losses.detach().double())
        self.correct.index_add_(0, domains, correct.detach().double())
        self.count.index_add_(0, domains, torch.ones_like(losses, dtype=torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        """Return `present` (bool mask of domains with samples), `loss` and `acc` per domain (NaN where absent)."""
        present = self.count > 0
        denom = self.count.clamp_min(1)
        nan = torch.full_like(self.count, float("nan"))
        loss = torch.where(present, self.loss_sum / denom, nan)
        acc = torch.where(present, self.correct / denom, nan)
        return {"present": present, "loss": loss, "acc": acc}
