"""ANT's interval clustering: the DP is exact (brute force), boundaries are valid, distances are as specified."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from callbacks.mtl.intervals import (
    affinity_boundaries,
    brute_force_intervals,
    cluster_intervals,
    distance_matrix,
    interval_cost_table,
    uniform_boundaries,
    validate_boundaries,
)


def assert_valid(bounds, n, k):
    assert len(bounds) == k + 1
    assert all(isinstance(b, int) for b in bounds)
    assert bounds[0] == 0 and bounds[-1] == n
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))  # contiguous, non-empty, cover 0..n-1


CASES = [(n, k) for n in (1, 2, 5, 8, 12) for k in (1, 2, 3, 5) if k <= n]


@pytest.mark.parametrize(("n", "k"), CASES)
def test_dp_equals_brute_force_on_random_tables(n, k):
    rng = np.random.default_rng(100 * n + k)
    for trial in range(3):
        d = rng.normal(size=(n, n)) if trial else rng.random((n, n))  # signed (affinity-like) and positive
        bounds, cost = cluster_intervals(d, k)
        ref_bounds, ref_cost = brute_force_intervals(d, k)
        assert cost == pytest.approx(ref_cost, abs=1e-9)
        assert_valid(bounds, n, k)
        table = interval_cost_table(d)
        assert sum(table[bounds[i], bounds[i + 1] - 1] for i in range(k)) == pytest.approx(cost, abs=1e-9)


def test_too_many_clusters():
    with pytest.raises(ValueError, match="cannot split 3 timesteps into 4"):
        cluster_intervals(np.zeros((3, 3)), 4)


def test_interval_cost_uses_the_centre_floor_of_l_plus_r_plus_1_over_2():
    d = np.arange(16, dtype=float).reshape(4, 4)  # d[t, c] = 4t + c
    table = interval_cost_table(d)
    # [1, 2]: centre (1 + 2 + 1) // 2 = 2 -> d[1, 2] + d[2, 2] = 6 + 10
    assert table[1, 2] == 16
    # [0, 3]: centre 2 -> sum_t (4t + 2)
    assert table[0, 3] == sum(4 * t + 2 for t in range(4))
    assert np.isinf(table[2, 1])


def test_timestep_clustering_on_1000_steps_is_near_uniform():
    bounds, _ = cluster_intervals(distance_matrix("timestep", 1000), 5)
    assert_valid(bounds, 1000, 5)
    assert max(abs(b - u) for b, u in zip(bounds, uniform_boundaries(1000, 5), strict=True)) <= 2


def test_snr_clustering_follows_the_schedule():
    alphas = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod
    log_bounds, _ = cluster_intervals(distance_matrix("snr", 1000, alphas, "log"), 5)
    lin_bounds, _ = cluster_intervals(distance_matrix("snr", 1000, alphas, "linear"), 5)
    assert_valid(log_bounds, 1000, 5)
    assert_valid(lin_bounds, 1000, 5)
    assert log_bounds != uniform_boundaries(1000, 5)
    # raw SNR explodes near t = 0, so its intervals crowd there
    assert lin_bounds[1] < log_bounds[1]
    with pytest.raises(ValueError, match="alphas_cumprod"):
        distance_matrix("snr", 1000)


def test_affinity_clustering_maps_grid_cuts_to_timesteps():
    timesteps = np.array([0, 100, 200, 300, 400, 500])
    affinity = np.zeros((6, 6))
    affinity[:3, :3] = 1.0  # two blocks of mutually similar timesteps
    affinity[3:, 3:] = 1.0
    assert affinity_boundaries(affinity, timesteps, 1000, 2) == [0, 300, 1000]
    with pytest.raises(ValueError, match="increasing"):
        affinity_boundaries(affinity, timesteps[::-1], 1000, 2)


def test_uniform_and_explicit_boundaries():
    assert uniform_boundaries(1000, 5) == [0, 200, 400, 600, 800, 1000]
    assert uniform_boundaries(7, 3) == [0, 2, 5, 7]
    assert validate_boundaries(torch.tensor([0, 3, 10]).tolist(), 10) == [0, 3, 10]
    for bad in ([0, 5, 5, 10], [1, 5, 10], [0, 5, 9], [0, 2.5, 10]):
        with pytest.raises(ValueError):
            validate_boundaries(bad, 10)
