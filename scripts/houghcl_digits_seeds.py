"""Run the HoughCL digits demo (Hough) and its DenseCL arg-max baseline over seeds and tabulate the results.

    python scripts/houghcl_digits_seeds.py --seeds 0 1 2 --out logs/houghcl_seeds

For each run: the pair correctness (fraction of chosen positives within one cell of the geometrically true cell)
of arg-max and of Hough on the same training batches in the last epoch (`train/pairs/*_epoch`), and the k-NN
(k=20) top-1 of the final backbone on the 597 test digits. Prints a markdown table (mean +- std over seeds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"hough": "configs/houghcl/digits.yaml", "argmax": "configs/houghcl/digits_argmax.yaml"}


def run(config: str, seed: int, out: Path, extra: list[str]) -> dict:
    save = out / f"{Path(config).stem}_s{seed}"
    cmd = [
        sys.executable,
        "cli.py",
        "fit",
        "-c",
        config,
        f"--seed_everything={seed}",
        f"--trainer.logger.init_args.save_dir={save}",
        f"--trainer.default_root_dir={save}",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]
    subprocess.run(cmd, cwd=ROOT, check=True)
    metrics = pd.read_csv(sorted(save.rglob("metrics.csv"))[-1])
    last = metrics.dropna(subset=["train/pairs/argmax_epoch"]).iloc[-1]
    results = json.loads(sorted(save.rglob("test_results.json"))[-1].read_text())
    knn = results["last"]["test/knn20/acc1"] if "last" in results else results["test/knn20/acc1"]
    return {
        "pairs_argmax": float(last["train/pairs/argmax_epoch"]),
        "pairs_hough": float(last["train/pairs/hough_epoch"]),
        "knn20": float(knn),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "houghcl_seeds")
    parser.add_argument("--extra", nargs="*", default=[], help="extra CLI overrides for every run")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        for rule, config in CONFIGS.items():
            rows.append({"rule": rule, "seed": seed, **run(config, seed, args.out, args.extra)})
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "summary.csv", index=False)
    agg = table.groupby("rule")[["pairs_argmax", "pairs_hough", "knn20"]].agg(["mean", "std"])
    print(table.to_markdown(index=False))
    print(agg.to_markdown())


if __name__ == "__main__":
    main()
