"""Sampling throughput of MEME against one large U-Net at equal DDIM steps (the paper's efficiency claim).

    python benchmarks/meme_sampling.py                                   # digits configs, CPU
    python benchmarks/meme_sampling.py --paper --steps 4 --batch 1       # FFHQ-scale denoisers on 64x64x3 latents

Both models are built by the real CLI from `configs/meme/digits.yaml` and `digits_large_unet.yaml` (``--paper``:
`ffhq.yaml` and `ffhq_large_unet.yaml`, without the autoencoder). Each measurement is a full DDIM run of
``--steps`` steps for ``--batch`` images; the two models alternate, ``--repeats`` times after one warm-up run
each, so load on a shared machine hits both alike; the median images/s and the ratio MEME / large are printed.
MEME runs one expert per step, so its cost per step is one expert's. The paper's claim (abstract): 3.3x faster
than its larger single-denoiser competitor; its protocol (GPU, batch, dtype) is unknown (docs/meme.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.meme_report import PAPER_ARGS, build  # noqa: E402


def run_once(module, steps: int, batch: int) -> float:
    start = time.perf_counter()
    module.generate(list(range(batch)), num_steps=steps)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paper", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.paper:
        models = {
            "MEME": build(["ffhq"], PAPER_ARGS),
            "large": build(["ffhq", "ffhq_large_unet"], PAPER_ARGS),
        }
    else:
        models = {"MEME": build(["digits"]), "large": build(["digits", "digits_large_unet"])}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for module in models.values():
            run_once(module, args.steps, args.batch)  # warm-up
        for _ in range(args.repeats):
            for name, module in models.items():
                times[name].append(run_once(module, args.steps, args.batch))
    rate = {name: args.batch / statistics.median(t) for name, t in times.items()}
    scale = "FFHQ-scale (64x64x3 latents)" if args.paper else "digits (8x8)"
    print(
        f"{scale}, DDIM {args.steps} steps, batch {args.batch}, {args.threads} thread(s), median of {args.repeats}:"
    )
    for name, r in rate.items():
        params = sum(p.numel() for p in models[name].net.parameters())
        print(f"  {name:6s} {r:10.2f} images/s   ({params / 1e6:.3f}M parameters in all)")
    print(f"  MEME / large throughput ratio: {rate['MEME'] / rate['large']:.2f}x")


if __name__ == "__main__":
    main()
