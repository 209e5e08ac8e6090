"""The digits table of the ANT section: FID and held-out losses per config and weights, mean +- std over seeds.

    python scripts/ant_digits_table.py --configs digits digits_uw digits_pcgrad digits_nash --seeds 0 1 2

Reads each run's `test_results.json` (written by `cli.py fit ... --test_after_fit true`) from
`<log_dir>/<config>_seed<s>/version_*/` (the newest version), copies it to `<runs_dir>/<config>_seed<s>.json` so the
numbers stay in the repo, and falls back to that copy when the log is gone. Prints a Markdown table and writes it
to `<runs_dir>/../table.md`.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    ("test/fid", "FID (digits features)", 1),
    ("test/loss_t0000-0200", "loss t 0-200", 4),
    ("test/loss_t0400-0600", "loss t 400-600", 4),
    ("test/loss_t0800-1000", "loss t 800-1000", 4),
    ("test/loss", "loss (mean of 5)", 4),
]


def load_run(config: str, seed: int, log_dir: Path, runs_dir: Path) -> dict:
    """One run's results, copied from the log folder into `runs_dir` when the log exists."""
    name = f"{config}_seed{seed}"
    found = sorted((log_dir / name).glob("version_*/test_results.json"), key=lambda p: p.stat().st_mtime)
    copy = runs_dir / f"{name}.json"
    if found:
        runs_dir.mkdir(parents=True, exist_ok=True)
        copy.write_text(found[-1].read_text())
    if not copy.is_file():
        raise FileNotFoundError(
            f"no test_results.json for {name} under {log_dir / name} and no copy at {copy}"
        )
    return json.loads(copy.read_text())


def cell(values: list[float], digits: int, show_runs: bool) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    text = f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"
    if show_runs:
        text += " (" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", nargs="+", default=["digits", "digits_uw", "digits_pcgrad", "digits_nash"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--weights", nargs="+", default=["last", "ema"])
    parser.add_argument("--log_dir", default="logs/ant_results")
    parser.add_argument("--runs_dir", default="docs/results/ant/runs")
    args = parser.parse_args()
    log_dir, runs_dir = ROOT / args.log_dir, ROOT / args.runs_dir
    runs = {(c, s): load_run(c, s, log_dir, runs_dir) for c in args.configs for s in args.seeds}
    lines = [
        "| config | weights | " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 2) + "|",
    ]
    for weights in args.weights:
        for config in args.configs:
            cells = [
                cell([runs[config, s][weights][key] for s in args.seeds], digits, key == "test/fid")
                for key, _, digits in COLUMNS
            ]
            lines.append(f"| `{config}` | {weights} | " + " | ".join(cells) + " |")
    text = f"Seeds {args.seeds}; mean ± std over seeds (FID: per-seed values in brackets).\n\n" + "\n".join(
        lines
    )
    (runs_dir.parent / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
