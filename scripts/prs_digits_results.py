"""Digits results of PRS and its baselines: test accuracy over seeds, and the Fourier curves of the trained models.

    python scripts/prs_digits_results.py --seeds 0 1 2 --jobs 2                      # the docs' table (100 % split)
    python scripts/prs_digits_results.py --seeds 0 1 2 --fractions 1.0 0.15 --jobs 2
    python scripts/prs_digits_results.py --reuse                                       # re-tabulate finished runs

Each run is `cli.py fit -c configs/prs/<config>.yaml --seed_everything <seed> --test_after_fit true
--data.init_args.train_fraction <f>` in a subprocess (`--jobs` at a time, one CPU thread each): `digits_conv`
(never switch), `digits_attention` (switch at epoch 0), `digits_oneshot` (all at epoch 15) and `digits` (PRS). The
data split is fixed (split_seed 0); the seed changes initialisation, augmentation and batch order. Then
`scripts/fourier_analysis.py` runs on every final checkpoint (the same 256 test images). Writes `runs.json` (every
run's test accuracy and per-layer delta log amplitude at pi), `table.md` (mean +- std over seeds), `fourier.csv` /
`fourier.png` (seed 0 of each schedule, first fraction) under `--out`; run logs and checkpoints go to `--log_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import fourier_analysis  # noqa: E402

SCHEDULES = {
    "conv": "digits_conv",
    "attention": "digits_attention",
    "oneshot": "digits_oneshot",
    "prs": "digits",
}


def run_one(schedule: str, fraction: float, seed: int, logs: Path, reuse: bool) -> dict:
    save_dir = logs / f"{schedule}_f{fraction}_seed{seed}"
    done = sorted(save_dir.rglob("test_results.json"))
    if not (reuse and done):
        cmd = [
            sys.executable,
            "cli.py",
            "fit",
            "-c",
            f"configs/prs/{SCHEDULES[schedule]}.yaml",
            f"--seed_everything={seed}",
            f"--data.init_args.train_fraction={fraction}",
            f"--trainer.logger.init_args.save_dir={save_dir}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--test_after_fit=true",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        done = sorted(save_dir.rglob("test_results.json"))
    result = json.loads(done[-1].read_text())["last"]
    ckpt = done[-1].parent / "checkpoints" / "last.ckpt"
    print(f"{schedule} f={fraction} seed={seed}: test/acc {100 * result['test/acc']:.2f}", flush=True)
    return {
        "schedule": schedule,
        "fraction": fraction,
        "seed": seed,
        "acc": result["test/acc"],
        "ckpt": str(ckpt),
    }


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--log_dir", default="logs/prs_digits_results")
    parser.add_argument("--out", default="docs/results/prs")
    parser.add_argument(
        "--reuse", action="store_true", help="take finished runs' numbers instead of rerunning"
    )
    args = parser.parse_args(argv)
    logs, out = Path(args.log_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(s, f, seed) for f in args.fractions for seed in args.seeds for s in args.schedules]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda j: run_one(*j, logs, args.reuse), jobs))

    # Fourier analysis of every final checkpoint, on the same fixed test batch
    config = str(ROOT / "configs" / "prs" / "digits.yaml")
    rows = fourier_analysis.main(
        ["-c", config, "--ckpt", *[r["ckpt"] for r in runs], "--label", *[str(i) for i in range(len(runs))],
         "--out", str(logs / "fourier_all"), "--no_plot"]
    )  # fmt: skip
    for i, run in enumerate(runs):
        at_pi = [
            r for r in rows if r["label"] == str(i) and r["freq_over_pi"] == 1.0 and r["layer"] != "stem"
        ]
        run["delta_at_pi"] = {r["layer"]: r["delta_log_amplitude"] for r in at_pi}
    first = [r for r in runs if r["fraction"] == args.fractions[0] and r["seed"] == args.seeds[0]]
    fourier_analysis.main(
        ["-c", config, "--ckpt", *[r["ckpt"] for r in first], "--label", *[r["schedule"] for r in first],
         "--out", str(out / "fourier")]
    )  # fmt: skip

    lines = [
        f"Digits (16x16, prs_vit_digits, 600 steps), test accuracy % (mean ± std over seeds {args.seeds}) and the "
        "mean over blocks of the delta log amplitude at pi; 2-core CPU.",
        "",
        "| train split | schedule | test acc | delta log amp at pi (blocks mean) | per block (1..L), seed "
        f"{args.seeds[0]} |",
        "|---|---|---|---|---|",
    ]
    for f in args.fractions:
        for s in args.schedules:
            sel = [r for r in runs if r["schedule"] == s and r["fraction"] == f]
            accs = [100 * r["acc"] for r in sel]
            deltas = [statistics.mean(r["delta_at_pi"].values()) for r in sel]
            per_block = ", ".join(f"{v:.2f}" for v in sel[0]["delta_at_pi"].values())
            lines.append(
                f"| {round(f * 1200)} images ({100 * f:g} %) | {s} | {mean_std(accs)} | {mean_std(deltas)} | "
                f"{per_block} |"
            )
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    (out / "runs.json").write_text(json.dumps(runs, indent=2))
    print(table)


if __name__ == "__main__":
    main()
