"""Stratified timestep sampling and per-cluster loss means.

ANT treats each timestep interval as one task. With stratified sampling every interval gets ``B / k`` samples of
each batch, laid out cluster-major (the official code's layout). Per-cluster losses are computed from the
cluster index of each sample's timestep, not from its position, so they are correct for any layout and, with
equal per-rank counts, the mean of the ranks' cluster losses is the cluster loss of the global batch.
"""

from __future__ import annotations

import torch


class StratifiedTimestepSampler:
    """Draw ``n`` timesteps, ``n / k`` uniformly inside each interval ``[b_i, b_{i+1})``, cluster-major.

    Args:
        boundaries: ``0 = b_0 < ... < b_k = T`` (integers).
        generator: optional ``torch.Generator`` (CPU); default the global RNG.
    """

    def __init__(self, boundaries: list[int], generator: torch.Generator | None = None) -> None:
        self.boundaries = [int(b) for b in boundaries]
        self.k = len(self.boundaries) - 1
        self.generator = generator
        self._lo = torch.tensor(self.boundaries[:-1], dtype=torch.int64)
        self._width = torch.tensor(self.boundaries[1:], dtype=torch.int64) - self._lo

    def __call__(self, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
        if n % self.k:
            raise ValueError(
                f"stratified timestep sampling needs a per-process batch size divisible by the number of "
                f"clusters ({self.k}), got {n}; change data.batch_size or num_clusters"
            )
        per = n // self.k
        u = torch.rand(self.k, per, generator=self.generator, dtype=torch.float64)
        t = self._lo[:, None] + (u * self._width[:, None]).floor().long()
        t = torch.minimum(t, (self._lo + self._width - 1)[:, None])
        return t.reshape(-1).to(device)


def cluster_ids(timesteps: torch.Tensor, boundaries: list[int]) -> torch.Tensor:
    """Index ``i`` of the interval ``[b_i, b_{i+1})`` holding each timestep."""
    inner = torch.as_tensor(boundaries[1:-1], dtype=timesteps.dtype, device=timesteps.device)
    return torch.bucketize(timesteps, inner, right=True)


def cluster_means(losses: torch.Tensor, ids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cluster mean of ``losses`` (differentiable) and per-cluster counts; an empty cluster's mean is 0."""
    sums = torch.zeros(k, dtype=losses.dtype, device=losses.device).index_add(0, ids, losses)
    counts = torch.bincount(ids, minlength=k).to(losses.dtype)
    return sums / counts.clamp_min(1), counts
