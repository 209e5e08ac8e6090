"""PCK (percentage of correct keypoints) as a torchmetrics Metric, averaged per pair, DDP-exact.

A predicted keypoint is correct when `||pred - gt||_2 <= alpha * thr` (thr per pair, see `flow.pck_threshold`).
Each pair's PCK is the fraction of its valid keypoints that are correct; the reported PCK is the mean over pairs
(not over keypoints), overall and per category. States are per-category sums with sum reduction, so under DDP
the result equals one process seeing every pair.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lightning_modules.cats.flow import valid_mask


class PCK(Metric):
    """Per-pair-mean PCK at several alphas, overall and per category (values in percent)."""

    full_state_update = False

    def __init__(self, alphas: tuple[float, ...] = (0.05, 0.1, 0.15), num_categories: int = 1) -> None:
        super().__init__()
        if not alphas or any(a <= 0 for a in alphas):
            raise ValueError(f"alphas must be positive, got {alphas}")
        if num_categories < 1:
            raise ValueError(f"num_categories must be >= 1, got {num_categories}")
        self.alphas = tuple(float(a) for a in alphas)
        self.num_categories = num_categories
        zeros = torch.zeros(len(self.alphas), num_categories, dtype=torch.float64)
        self.add_state("pck_sum", default=zeros, dist_reduce_fx="sum")
        self.add_state(
            "pairs", default=torch.zeros(num_categories, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(
        self,
        pred_kps: torch.Tensor,
        gt_kps: torch.Tensor,
        n_pts: torch.Tensor,
        thresholds: torch.Tensor,
        categories: torch.Tensor | None = None,
    ) -> None:
        """Add pairs: keypoints `(B, K, 2)` padded, `n_pts` `(B,)`, thresholds `(B,)`, categories `(B,)` ints."""
        if pred_kps.shape != gt_kps.shape:
            raise ValueError(f"pred_kps {tuple(pred_kps.shape)} and gt_kps {tuple(gt_kps.shape)} differ")
        if bool((n_pts < 1).any()):
            raise ValueError("every pair needs at least one keypoint for PCK (n_pts >= 1)")
        b = pred_kps.shape[0]
        cats = (
            torch.zeros(b, dtype=torch.long, device=pred_kps.device)
            if categories is None
            else categories.long()
        )
        if bool(((cats < 0) | (cats >= self.num_categories)).any()):
            raise ValueError(
                f"category index out of range [0, {self.num_categories}): {cats.unique().tolist()}"
            )
        valid = valid_mask(n_pts, pred_kps.shape[1])
        dist = torch.linalg.vector_norm(pred_kps.double() - gt_kps.double(), dim=-1)  # (B, K)
        for a, alpha in enumerate(self.alphas):
            correct = (dist <= alpha * thresholds.double()[:, None]) & valid
            per_pair = correct.sum(dim=1).double() / n_pts.double()
            self.pck_sum[a].index_add_(0, cats, per_pair)
        self.pairs.index_add_(0, cats, torch.ones(b, dtype=torch.float64, device=pred_kps.device))

    def compute(self) -> dict[str, torch.Tensor]:
        """`overall` `(n_alpha,)` mean over all pairs; `per_category` `(n_alpha, n_cat)`, NaN where no pair."""
        total = self.pairs.sum().clamp_min(1)
        overall = 100.0 * self.pck_sum.sum(dim=1) / total
        per_cat = torch.where(
            self.pairs > 0,
            100.0 * self.pck_sum / self.pairs.clamp_min(1),
            torch.full_like(self.pck_sum, torch.nan),
        )
        return {"overall": overall, "per_category": per_cat}
