"""Interval clustering of diffusion timesteps (ANT, Go et al., NeurIPS 2023).

Timesteps 0..T-1 are split into k contiguous, half-open intervals ``[b_i, b_{i+1})`` with ``b_0 = 0`` and
``b_k = T``, minimizing the sum of interval costs. The cost of the interval ``[l, r]`` (inclusive) is
``sum_{t=l..r} d(t, c)`` with the centre ``c = (l + r + 1) // 2``; ``d`` is a distance between timesteps:

- ``timestep``: ``|t - c|``;
- ``snr``: ``|v_t - v_c|`` with ``v`` the log-SNR (default) or the raw SNR of the noise schedule;
- ``gradient``: ``-A[c, t]`` for a task-affinity matrix ``A`` (cosine similarity of per-timestep gradients).

The dynamic program is exact: ``D[j, i]`` is the least cost of splitting ``0..i`` into ``j + 1`` intervals,
``D[0, i] = cost(0, i)`` and ``D[j, i] = min_{L < i} D[j-1, L] + cost(L+1, i)``. Interval costs for every
``(l, r)`` come from column prefix sums of the distance matrix, so the whole DP is O(k T^2) vectorized
NumPy (T = 1000, k = 5: a few hundredths of a second; `benchmarks/interval_clustering.py`).
Unlike the official code, every interval may be a singleton and boundaries are integers.
"""

from __future__ import annotations

import numpy as np
import torch


def uniform_boundaries(num_timesteps: int, k: int) -> list[int]:
    """``k`` near-equal intervals over ``0..num_timesteps-1``: ``b_i = round(i * T / k)``."""
    _check(num_timesteps, k)
    return [round(i * num_timesteps / k) for i in range(k + 1)]


def distance_matrix(kind: str, num_timesteps: int, alphas_cumprod=None, snr_space: str = "log") -> np.ndarray:
    """``d[t, c]`` for ``kind`` in {``timestep``, ``snr``} (float64, shape ``(T, T)``)."""
    if kind == "timestep":
        t = np.arange(num_timesteps, dtype=np.float64)
        return np.abs(t[:, None] - t[None, :])
    if kind == "snr":
        if alphas_cumprod is None:
            raise ValueError("snr clustering needs the schedule's alphas_cumprod")
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu().numpy()
        if a.shape != (num_timesteps,):
            raise ValueError(f"alphas_cumprod has shape {a.shape}, expected ({num_timesteps},)")
        snr = a / (1.0 - a)
        if snr_space == "log":
            v = np.log(snr)
        elif snr_space == "linear":
            v = snr
        else:
            raise ValueError(f"snr_space must be 'log' or 'linear', got {snr_space!r}")
        return np.abs(v[:, None] - v[None, :])
    raise ValueError(f"unknown distance {kind!r}; use 'timestep', 'snr' or an affinity matrix (gradient)")


def interval_cost_table(distance: np.ndarray) -> np.ndarray:
    """``C[l, r] = sum_{t=l..r} distance[t, (l+r+1)//2]`` for ``l <= r`` (``inf`` below the diagonal)."""
    d = np.asarray(distance, dtype=np.float64)
    n = d.shape[0]
    if d.shape != (n, n):
        raise ValueError(f"distance must be a square matrix, got shape {d.shape}")
    prefix = np.zeros((n + 1, n))
    np.cumsum(d, axis=0, out=prefix[1:])  # prefix[i, c] = sum_{t < i} d[t, c]
    l_idx, r_idx = np.triu_indices(n)
    centre = (l_idx + r_idx + 1) // 2
    table = np.full((n, n), np.inf)
    table[l_idx, r_idx] = prefix[r_idx + 1, centre] - prefix[l_idx, centre]
    return table


def cluster_intervals(distance: np.ndarray, k: int) -> tuple[list[int], float]:
    """Exact minimum-cost split of ``0..n-1`` into ``k`` contiguous intervals.

    Returns ``(boundaries, cost)`` with integer boundaries ``0 = b_0 < b_1 < ... < b_k = n``.
    """
    cost = interval_cost_table(distance)
    n = cost.shape[0]
    _check(n, k)
    best = cost[0].copy()  # best[i]: split 0..i into one interval
    back = np.zeros((k, n), dtype=np.int64)
    for j in range(1, k):
        # candidate[L, i] = best[L] + cost[L+1, i]; only L < i is valid (cost is inf below the diagonal)
        candidate = best[:-1, None] + cost[1:, :]
        arg = np.argmin(candidate, axis=0)
        new = candidate[arg, np.arange(n)]
        new[:j] = np.inf  # fewer points than intervals
        back[j] = arg
        best = new
    bounds = [n]
    i = n - 1
    for j in range(k - 1, 0, -1):
        last = int(back[j, i])  # end of the previous interval
        bounds.append(last + 1)
        i = last
    bounds.append(0)
    return bounds[::-1], float(best[n - 1])


def brute_force_intervals(distance: np.ndarray, k: int) -> tuple[list[int], float]:
    """Reference for tests: try every set of ``k - 1`` cut points (exponential; small n only)."""
    from itertools import combinations

    cost = interval_cost_table(distance)
    n = cost.shape[0]
    _check(n, k)
    best, best_bounds = np.inf, None
    for cuts in combinations(range(1, n), k - 1):
        bounds = [0, *cuts, n]
        total = sum(cost[bounds[i], bounds[i + 1] - 1] for i in range(k))
        if total < best:
            best, best_bounds = total, bounds
    return best_bounds, float(best)


def affinity_boundaries(affinity: np.ndarray, timesteps: np.ndarray, num_timesteps: int, k: int) -> list[int]:
    """DP on ``-affinity`` over the measured grid ``timesteps`` (ascending), mapped back to ``0..T-1``.

    A cut before grid point ``i`` becomes the timestep boundary ``timesteps[i]``, so a grid point and the
    timesteps just above it share an interval.
    """
    timesteps = np.asarray(timesteps, dtype=np.int64)
    if timesteps.ndim != 1 or np.any(np.diff(timesteps) <= 0):
        raise ValueError("affinity timesteps must be strictly increasing")
    if timesteps[0] < 0 or timesteps[-1] >= num_timesteps:
        raise ValueError(f"affinity timesteps must lie in [0, {num_timesteps})")
    bounds, _ = cluster_intervals(-np.asarray(affinity, dtype=np.float64), k)
    return [0, *[int(timesteps[b]) for b in bounds[1:-1]], num_timesteps]


def validate_boundaries(boundaries: list[int], num_timesteps: int) -> list[int]:
    """Check ``0 = b_0 < ... < b_k = T`` (integers) and return them as a list of ints."""
    b = [int(x) for x in boundaries]
    if any(int(x) != x for x in boundaries) or b[0] != 0 or b[-1] != num_timesteps:
        raise ValueError(f"boundaries must be integers from 0 to {num_timesteps}, got {boundaries}")
    if any(b[i] >= b[i + 1] for i in range(len(b) - 1)):
        raise ValueError(f"boundaries must be strictly increasing (no empty interval), got {boundaries}")
    return b


def _check(n: int, k: int) -> None:
    if k < 1 or n < k:
        raise ValueError(f"cannot split {n} timesteps into {k} non-empty intervals")
