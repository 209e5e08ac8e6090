"""Which expert owns a diffusion timestep: the one router MEME (denoising experts) and PPAP (guidance experts) share.

``N`` experts own the contiguous half-open intervals ``[b_i, b_{i+1})`` of ``0..T-1`` with ``0 = b_0 < ... < b_N = T``,
the same convention as ANT's interval clustering (`callbacks.mtl.intervals`). Half-open means a boundary timestep
``b_i`` belongs to expert ``i`` (the interval it starts), never to two experts: training draws an expert's
timesteps with ``randint(b_i, b_{i+1})`` and sampling routes timestep ``t`` with ``bucketize(t, b[1:-1], right=True)``,
so the two agree at every boundary. (PPAP's official code uses inclusive upper bounds, which gives a boundary step
to two experts; the spec asks us not to reproduce that.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from callbacks.mtl.intervals import uniform_boundaries, validate_boundaries


class IntervalRouter:
    """Maps timesteps to expert indices over fixed half-open intervals.

    Args:
        boundaries: ``[0, b_1, ..., T]``, strictly increasing integers.
        num_timesteps: ``T``, the training scheduler's number of timesteps.
    """

    def __init__(self, boundaries: Sequence[int], num_timesteps: int) -> None:
        self.boundaries = validate_boundaries(list(boundaries), num_timesteps)
        self.num_timesteps = num_timesteps

    @classmethod
    def uniform(cls, num_timesteps: int, num_experts: int) -> IntervalRouter:
        """``num_experts`` near-equal intervals: ``b_i = round(i * T / N)``."""
        return cls(uniform_boundaries(num_timesteps, num_experts), num_timesteps)

    @property
    def num_experts(self) -> int:
        return len(self.boundaries) - 1

    def interval(self, expert: int) -> tuple[int, int]:
        """``(low, high)``: expert ``expert`` owns ``low <= t < high``."""
        if not 0 <= expert < self.num_experts:
            raise IndexError(f"expert index {expert} out of range for {self.num_experts} experts")
        return self.boundaries[expert], self.boundaries[expert + 1]

    def expert_of(self, t: torch.Tensor | int) -> torch.Tensor:
        """Expert index of each timestep (same shape as ``t``); raises on a timestep outside ``[0, T)``."""
        t = torch.as_tensor(t)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_timesteps}), got {t.min()}..{t.max()}")
        inner = torch.as_tensor(self.boundaries[1:-1], dtype=t.dtype, device=t.device)
        return torch.bucketize(t, inner, right=True)

    def draw(
        self, expert: int, n: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """``n`` timesteps drawn uniformly from expert ``expert``'s interval (what training uses)."""
        low, high = self.interval(expert)
        return torch.randint(low, high, (n,), generator=generator, device=device)

    def __repr__(self) -> str:
        return f"IntervalRouter(boundaries={self.boundaries}, num_timesteps={self.num_timesteps})"
