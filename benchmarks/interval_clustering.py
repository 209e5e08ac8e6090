"""Time of ANT's interval-clustering DP for T = 1000 timesteps and k = 5 (target: well under a second).

    python benchmarks/interval_clustering.py [--T 1000 --k 5 --repeats 5]

Times the full computation (distance matrix, interval-cost table from prefix sums, DP, backtrack) for the
timestep, log-SNR and a random affinity (gradient) distance; prints the median and exits non-zero above 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import DDPMScheduler  # noqa: E402

from callbacks.mtl.intervals import cluster_intervals, distance_matrix  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--T", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    alphas = DDPMScheduler(num_train_timesteps=args.T).alphas_cumprod
    rng = np.random.default_rng(0)
    affinity = rng.uniform(-1, 1, (args.T, args.T))
    cases = {
        "timestep": lambda: distance_matrix("timestep", args.T),
        "log-SNR": lambda: distance_matrix("snr", args.T, alphas, "log"),
        "gradient (random affinity)": lambda: -affinity,
    }
    worst = 0.0
    print(f"interval clustering DP, T={args.T}, k={args.k}, median of {args.repeats}")
    for name, make in cases.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            bounds, _ = cluster_intervals(make(), args.k)
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        worst = max(worst, median)
        print(f"  {name:<28} {1000 * median:8.1f} ms   boundaries {bounds}")
    print(f"target: < 1 s -> {'met' if worst < 1.0 else 'MISSED'}")
    return 0 if worst < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
