"""The MEME digits table: per-interval held-out loss and FID (digits features) per variant, mean ± std over seeds.

    python scripts/meme_digits_results.py --run --seeds 0 1 2      # trains + tests every variant and seed
    python scripts/meme_digits_results.py --run --seeds 0 1 2 --steps_per_expert 100   # shorter (docs/meme.md)
    python scripts/meme_digits_results.py --seeds 0 1 2            # only tabulates runs already done

Each run is ``python cli.py fit -c configs/meme/digits.yaml [-c configs/meme/<variant>.yaml] --seed_everything s
--test_after_fit true`` logged to ``<log_dir>/<variant>_seed<s>/``. Its `test_results.json` is copied to
``<runs_dir>/<variant>_seed<s>.json`` (so the numbers stay in the repo) and the table is written to
``<runs_dir>/../digits_table.md``. Variants: ``digits`` (MEME), ``digits_reversed``, ``digits_same_arch_experts``,
``digits_small_unet`` (and ``digits_large_unet`` if asked for).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from scripts.ant_digits_table import cell, load_run  # the same run files and table cells as ANT's table

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    ("test/fid", "FID (digits features)", 1),
    ("test/loss_t0000-0250", "loss t 0-250", 4),
    ("test/loss_t0250-0500", "loss t 250-500", 4),
    ("test/loss_t0500-0750", "loss t 500-750", 4),
    ("test/loss_t0750-1000", "loss t 750-1000", 4),
    ("test/loss", "loss (mean of 4)", 4),
]
SINGLE = ("digits_small_unet", "digits_large_unet")
VARIANTS = ["digits_small_unet", "digits_same_arch_experts", "digits", "digits_reversed"]


def run(variant: str, seed: int, log_dir: Path, steps_per_expert: int | None) -> None:
    configs = ["-c", "configs/meme/digits.yaml"]
    if variant != "digits":
        configs += ["-c", f"configs/meme/{variant}.yaml"]
    cmd = [
        sys.executable,
        "cli.py",
        "fit",
        *configs,
        f"--seed_everything={seed}",
        "--test_after_fit=true",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={log_dir}",
        f"--trainer.logger.init_args.name={variant}_seed{seed}",
    ]
    if steps_per_expert is not None:
        # experts train together (N updates per step); single models get N x the steps
        steps = steps_per_expert * (4 if variant in SINGLE else 1)
        cmd += [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}"]
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    print(f"{variant} seed {seed}: {time.time() - start:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--weights", nargs="+", default=["last", "ema"], help="the EMA callback's variants")
    parser.add_argument("--run", action="store_true", help="train and test the runs first")
    parser.add_argument(
        "--steps_per_expert", type=int, default=None, help="override the configs' 300 updates per expert"
    )
    parser.add_argument("--log_dir", default="logs/meme_results")
    parser.add_argument("--runs_dir", default="docs/results/meme/runs")
    args = parser.parse_args()
    log_dir, runs_dir = ROOT / args.log_dir, ROOT / args.runs_dir
    if args.run:
        for seed in args.seeds:
            for variant in args.variants:
                run(variant, seed, log_dir, args.steps_per_expert)
    runs = {(v, s): load_run(v, s, log_dir, runs_dir) for v in args.variants for s in args.seeds}
    lines = [
        "| variant | weights | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for weights in args.weights:
        for variant in args.variants:
            cells = [
                cell([runs[variant, s][weights][key] for s in args.seeds], digits, key == "test/fid")
                for key, _, digits in COLUMNS
            ]
            lines.append(f"| `{variant}` | {weights} | " + " | ".join(cells) + " |")
    text = f"Seeds {args.seeds}; mean ± std over seeds (FID: per-seed values in brackets).\n\n" + "\n".join(
        lines
    )
    (runs_dir.parent / "digits_table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
