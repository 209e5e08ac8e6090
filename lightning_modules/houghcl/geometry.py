"""Crop geometry: the true key cell of every query cell, and the pair-correctness metric.

Boxes are each view's crop in the source image, `(x0, y0, x1, y1)` as fractions of the source width/height; a flip
flag says the view was mirrored horizontally after cropping. The centre of query cell (r, c) on an H x W map is
mapped to the source image and then into the key view; the key cell containing it is the geometrically true
positive. Query cells whose centre falls outside the key view have no true positive and are not counted.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def true_key_cells(
    boxes_q: torch.Tensor,
    flips_q: torch.Tensor,
    boxes_k: torch.Tensor,
    flips_k: torch.Tensor,
    grid: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return `(rows, cols, inside)`, each (B, N): the true key cell of every query cell and whether it exists."""
    h, w = grid
    dev = boxes_q.device
    r = torch.arange(h, device=dev, dtype=torch.float64).repeat_interleave(w)
    c = torch.arange(w, device=dev, dtype=torch.float64).repeat(h)
    u = (c + 0.5) / w  # cell centre in the query view, as a fraction of its width
    v = (r + 0.5) / h
    bq, bk = boxes_q.double(), boxes_k.double()
    u = torch.where(flips_q.bool()[:, None], 1 - u[None], u[None])  # undo the query flip
    x = bq[:, 0:1] + u * (bq[:, 2:3] - bq[:, 0:1])
    y = bq[:, 1:2] + v[None] * (bq[:, 3:4] - bq[:, 1:2])
    uk = (x - bk[:, 0:1]) / (bk[:, 2:3] - bk[:, 0:1])
    vk = (y - bk[:, 1:2]) / (bk[:, 3:4] - bk[:, 1:2])
    inside = (uk >= 0) & (uk < 1) & (vk >= 0) & (vk < 1)
    uk = torch.where(flips_k.bool()[:, None], 1 - uk, uk)
    cols = (uk * w).floor().clamp(0, w - 1).long()
    rows = (vk * h).floor().clamp(0, h - 1).long()
    return rows, cols, inside


def pair_correctness(
    index: torch.Tensor,
    boxes_q: torch.Tensor,
    flips_q: torch.Tensor,
    boxes_k: torch.Tensor,
    flips_k: torch.Tensor,
    grid: tuple[int, int],
    tolerance: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(correct, total)` counts: query cells with a true key cell, and those whose chosen key cell `index`
    (B, N) lies within `tolerance` cells (Chebyshev distance) of it."""
    h, w = grid
    rows, cols, inside = true_key_cells(boxes_q, flips_q, boxes_k, flips_k, grid)
    near = ((index // w - rows).abs() <= tolerance) & ((index % w - cols).abs() <= tolerance)
    return (near & inside).sum(), inside.sum()


class PairPrecision(Metric):
    """Fraction of chosen positive pairs that are geometrically correct; sum states, so DDP is exact."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: torch.Tensor, total: torch.Tensor) -> None:
        self.correct += correct.double()
        self.total += total.double()

    def compute(self) -> torch.Tensor:
        return self.correct / self.total.clamp_min(1)
