"""Which training timesteps each expert sees: hard or soft assignment over the shared half-open intervals.

Hard: expert ``n`` trains only on its own interval ``[b_n, b_{n+1})`` (drawn with `IntervalRouter.draw`, so
training and sampling agree at every boundary). Soft (MEME's abstract: experts also see some timesteps outside
their interval; the rule below is reconstructed, see docs/meme.md): with probability ``p[n]`` the timestep is
drawn uniformly from the expert's interval, otherwise from ``outside_dist``:

- ``uniform_all``: uniform on ``0..T-1`` (may land inside the interval too);
- ``uniform_outside``: uniform on the timesteps outside the interval;
- ``neighbors``: uniform on the union of the adjacent experts' intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_modules.diffusion.router import IntervalRouter

ASSIGNMENTS = ("hard", "soft")
OUTSIDE_DISTS = ("uniform_all", "uniform_outside", "neighbors")


class TimestepAssignment:
    """Draws training timesteps for an expert.

    Args:
        router: the experts' intervals.
        mode: ``hard`` or ``soft``.
        p: per expert, the probability of drawing inside its own interval (soft only; hard is ``p = 1``).
        outside_dist: where the other draws come from (soft only).
    """

    def __init__(
        self,
        router: IntervalRouter,
        mode: str = "hard",
        p: Sequence[float] | None = None,
        outside_dist: str = "uniform_all",
    ) -> None:
        if mode not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {mode!r}")
        if outside_dist not in OUTSIDE_DISTS:
            raise ValueError(f"outside_dist must be one of {OUTSIDE_DISTS}, got {outside_dist!r}")
        n = router.num_experts
        if mode == "hard":
            probs = [1.0] * n
        else:
            if p is None or len(p) != n:
                raise ValueError(f"soft assignment needs p with one probability per expert ({n})")
            probs = [float(v) for v in p]
            if any(not 0.0 <= v <= 1.0 for v in probs):
                raise ValueError(f"the probabilities p must lie in [0, 1], got {probs}")
            if n == 1 and outside_dist != "uniform_all" and min(probs) < 1:
                raise ValueError(f"one expert owns every timestep: outside_dist {outside_dist!r} is empty")
        self.router, self.mode, self.p, self.outside_dist = router, mode, probs, outside_dist

    def _outside(self, expert: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
        T = self.router.num_timesteps
        if self.outside_dist == "uniform_all":
            return torch.randint(0, T, (n,), generator=generator)
        low, high = self.router.interval(expert)
        if self.outside_dist == "uniform_outside":
            u = torch.randint(0, T - (high - low), (n,), generator=generator)
            return torch.where(u < low, u, u + (high - low))
        # neighbors: [left_low, low) then [high, right_high), drawn as one uniform range
        left_low = self.router.boundaries[expert - 1] if expert > 0 else low
        right_high = self.router.boundaries[expert + 2] if expert + 1 < self.router.num_experts else high
        u = torch.randint(0, (low - left_low) + (right_high - high), (n,), generator=generator)
        return torch.where(u < low - left_low, u + left_low, u - (low - left_low) + high)

    def draw(
        self, expert: int, n: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:
        """``n`` training timesteps for ``expert`` (drawn on CPU, so identical on every device)."""
        t = self.router.draw(expert, n, generator=generator)
        p = self.p[expert]
        if p < 1.0:
            outside = torch.rand(n, generator=generator) >= p
            t = torch.where(outside, self._outside(expert, n, generator), t)
        return t.to(device) if device is not None else t
