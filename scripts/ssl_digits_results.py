"""Digits results of the SSL methods with and without ScoreCL: k-NN / linear-probe accuracy over seeds.

    python scripts/ssl_digits_results.py --seeds 0 1 2 --out docs/results/ssl_digits
    python scripts/ssl_digits_results.py --methods simclr --variants none score random --jobs 2
    python scripts/ssl_digits_results.py --epochs 20 --pretrain_steps 500 --jobs 2   # the docs' table
    python scripts/ssl_digits_results.py --epochs 20 --pretrain_steps 500 --variants none score random --reuse

Each run is `cli.py fit -c configs/scorecl/<method>_digits[_scorecl].yaml --seed_everything <seed> --test_after_fit
true` in a subprocess (`--jobs` at a time, one CPU thread each). Variants: `none` (the base method), `score`
(ScoreCL weights) and `random` (ScoreCL's weights randomly permuted over the batch: the reweighting-noise control).
The data split and the score network's seed stay fixed; the seed changes initialisation and augmentation. Writes
`runs.json` (every run's test metrics) and `table.md` (mean +- std over seeds) under `--out`; run logs and
checkpoints go to `--log_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("test/knn20/acc1", "test/knn200/acc1", "test/linear/acc1")


def variant_config(
    method: str, variant: str, seed: int, tmp: Path, epochs: int | None, pretrain_steps: int | None
) -> Path:
    """The run's config: `configs/scorecl/<method>_digits[_scorecl].yaml`, with the random control's
    `weighting: random`, and `epochs` (validating once, at the end) / `pretrain_steps` when given."""
    name = f"{method}_digits.yaml" if variant == "none" else f"{method}_digits_scorecl.yaml"
    cfg = yaml.safe_load((ROOT / "configs" / "scorecl" / name).read_text())
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ScoreWeighting"):
            if variant == "random":
                cb["init_args"]["weighting"] = "random"
            if pretrain_steps:
                cb["init_args"]["pretrain_steps"] = pretrain_steps
    if epochs:
        cfg["trainer"]["max_epochs"] = cfg["trainer"]["check_val_every_n_epoch"] = epochs
    out = tmp / f"{method}_digits_{variant}_{seed}.yaml"
    out.write_text(yaml.safe_dump(cfg))
    return out


def run_one(method: str, variant: str, seed: int, logs: Path, tmp: Path, args: argparse.Namespace) -> dict:
    save_dir = logs / f"{method}_{variant}_seed{seed}"
    done = sorted(save_dir.rglob("test_results.json"))
    if args.reuse and done:  # a finished run of this method/variant/seed: take its numbers
        result = json.loads(done[-1].read_text())["last"]
        return {"method": method, "variant": variant, "seed": seed, "metrics": result}
    cmd = [
        sys.executable,
        "cli.py",
        "fit",
        "-c",
        str(variant_config(method, variant, seed, tmp, args.epochs, args.pretrain_steps)),
        f"--seed_everything={seed}",
        "--test_after_fit=true",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        *args.extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(sorted(save_dir.rglob("test_results.json"))[-1].read_text())["last"]
    print(
        f"{method:8s} {variant:6s} seed {seed}: " + ", ".join(f"{k} {100 * result[k]:.2f}" for k in METRICS),
        flush=True,
    )
    return {"method": method, "variant": variant, "seed": seed, "metrics": result}


def table(runs: list[dict], methods: list[str], variants: list[str], seeds: list[int]) -> str:
    lines = [
        f"k-NN and online linear-probe top-1 (%) on the 597 digits test images, mean +- std over seeds {seeds}.",
        "",
        "| method | weights | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 2) + "|",
    ]
    for method in methods:
        for variant in variants:
            cells = []
            for key in METRICS:
                vals = [
                    100 * r["metrics"][key] for r in runs if r["method"] == method and r["variant"] == variant
                ]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.2f} +- {sd:.2f}" if vals else "-")
            lines.append(f"| {method} | {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=["simclr", "simsiam", "wmse", "vicreg"])
    parser.add_argument(
        "--variants", nargs="+", default=["none", "score"], choices=["none", "score", "random"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--epochs", type=int, default=None, help="override max_epochs (validate once at the end)"
    )
    parser.add_argument("--pretrain_steps", type=int, default=None, help="override the score net's DSM steps")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="take the numbers of runs already finished under --log_dir (same settings!) instead of rerunning",
    )
    parser.add_argument("--out", default="docs/results/ssl_digits")
    parser.add_argument("--log_dir", default="logs/ssl_digits_results", help="run logs and checkpoints")
    parser.add_argument(
        "extra", nargs="*", help="extra CLI arguments after --, e.g. -- --trainer.max_epochs=30"
    )
    args = parser.parse_args()
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(m, v, s) for s in args.seeds for m in args.methods for v in args.variants]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: run_one(*j, (ROOT / args.log_dir).resolve(), Path(tmp), args), jobs))
    (out / "runs.json").write_text(json.dumps({"command": " ".join(sys.argv), "runs": runs}, indent=2))
    text = table(runs, args.methods, args.variants, args.seeds)
    (out / "table.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
