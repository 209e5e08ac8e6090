"""CATs inference speed (pairs/s) at 256x256, batch 1 and 16, and parameter counts of the paper-scale models.

Builds `CATsModule` exactly as `configs/cats/spair.yaml` and `pfpascal.yaml` do, with random weights (speed does
not depend on the values; nothing is downloaded), and times `forward(target, source)` under `torch.inference_mode`
after one warm-up call. Also times the raw-correlation baseline (`aggregate=False`) back to back, so the
aggregator's share of the cost is a same-machine ratio.

    python benchmarks/cats_inference.py --repeats 3 --out docs/results/cats/inference.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_modules.cats import CATsModule  # noqa: E402

LEVELS = {"spair": [0, 8, 20, 21, 26, 28, 29, 30], "pfpascal": [2, 17, 21, 22, 25, 26, 28]}


def build(benchmark: str, aggregate: bool = True) -> CATsModule:
    return CATsModule(
        backbone="resnet101.tv_in1k", pretrained=False, hyperpixel_ids=LEVELS[benchmark], aggregate=aggregate
    ).eval()


def pairs_per_second(model: CATsModule, batch: int, repeats: int) -> float:
    x = torch.rand(batch, 3, 256, 256)
    with torch.inference_mode():
        model(x, x)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            model(x, x)
        return batch * repeats / (time.perf_counter() - start)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report: dict = {"machine": f"{platform.machine()}, {args.threads} torch threads (shared 2-core CPU)"}
    for benchmark in LEVELS:
        model = build(benchmark)
        report[f"params_{benchmark}"] = {
            "total": count(model),
            "backbone_used": count(model.features),
            "aggregator_and_projections": count(model.aggregator) + count(model.projections),
        }
    cats, raw = build("spair"), build("spair", aggregate=False)
    for batch in args.batches:
        report[f"spair_cats_pairs_per_s_b{batch}"] = pairs_per_second(cats, batch, args.repeats)
        report[f"spair_raw_pairs_per_s_b{batch}"] = pairs_per_second(raw, batch, args.repeats)
        print({k: v for k, v in report.items() if f"b{batch}" in k}, flush=True)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
