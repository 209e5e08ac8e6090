"""CEAA on the real ARC tagging data with MiniLM on CPU: zero-shot vs bi-encoder vs bi-encoder + augmentation.

    python scripts/ceaa_arc_results.py --data /path/to/arc_tagging [--out docs/results/ceaa] [--seeds 0]
        [--train-subsample 2000] [--epochs 1] [--aug-ratio 0.5] [--variants zero_shot plain h1 h2]

Every variant runs through the real CLI (``python cli.py fit/test -c configs/ceaa/arc_minilm.yaml ...``) in a
subprocess; the exact commands are written next to the numbers. All trained variants see the same training subsample,
batch size and number of optimizer steps (spec pitfall: H1 adds rows to a batch, not batches to an epoch). Training
time is the wall time of ``fit`` (model loading included, no validation); test time that of ``test`` on the full
1,400-question test split ranked against the 351 distinct candidate tags. Writes ``results.json`` and ``results.md`` to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/ceaa/arc_minilm.yaml"
VARIANTS = {
    "zero_shot": [],
    "plain": ["--data.init_args.augmentation=none"],
    "h1": ["--data.init_args.augmentation=h1"],
    "h2": ["--data.init_args.augmentation=h2"],
}
KS = (1, 3, 5, 10)
BUCKETS = ("unseen", "rare", "medium", "frequent")


def run(cmd: list[str], log: Path) -> float:
    """Run a CLI command, keep its output in ``log``, return its wall time; fail loudly with the log's tail."""
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return seconds


def newest(folder: Path, pattern: str) -> Path:
    found = sorted(folder.rglob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no {pattern} under {folder}")
    return found[-1]


def test_metrics(log_dir: Path) -> dict[str, float]:
    """The last ``test/*`` row of the CSV logger's metrics.csv."""
    import csv

    with newest(log_dir, "metrics.csv").open() as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("test/R@1")]
    return {k[len("test/") :]: float(v) for k, v in rows[-1].items() if k.startswith("test/") and v != ""}


def run_variant(name: str, args, seed: int, out: Path) -> dict:
    runs = Path(args.work) / f"{name}_seed{seed}"
    runs.mkdir(parents=True, exist_ok=True)
    base = [
        sys.executable,
        "cli.py",
        "{stage}",
        "-c",
        CONFIG,
        f"--data.init_args.root={args.data}",
        f"--seed_everything={seed}",
        f"--trainer.logger.init_args.save_dir={runs}",
        "--trainer.enable_progress_bar=false",
    ]
    record: dict = {"variant": name, "seed": seed, "commands": []}
    ckpt_args: list[str] = []
    if name != "zero_shot":
        fit = [
            *base,
            f"--data.init_args.train_subsample={args.train_subsample}",
            f"--data.init_args.aug_ratio={args.aug_ratio}",
            f"--data.init_args.seed={seed}",
            f"--trainer.max_epochs={args.epochs}",
            "--trainer.limit_val_batches=0",
            *VARIANTS[name],
        ]
        fit[2] = "fit"
        record["commands"].append(" ".join(fit[1:]))
        record["train_seconds"] = round(run(fit, runs / "fit.log"), 1)
        ckpt = newest(runs, "*.ckpt")
        ckpt_args = [f"--ckpt_path={ckpt}"]
        record["steps"] = int(ckpt.stem.split("step=")[-1]) if "step=" in ckpt.stem else None
    test = [*base, *ckpt_args, f"--trainer.logger.init_args.name=test_{name}"]
    test[2] = "test"
    record["commands"].append(" ".join(test[1:]))
    record["test_seconds"] = round(run(test, runs / "test.log"), 1)
    record["metrics"] = test_metrics(runs / f"test_{name}")
    return record


def table(records: list[dict]) -> str:
    head = ["variant", "seed", *[f"R@{k}" for k in KS], "P@1", "MRR", "train s", "steps", "test s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        m = r["metrics"]
        cells = [
            r["variant"],
            str(r["seed"]),
            *[f"{100 * m[f'R@{k}']:.1f}" for k in KS],
            f"{100 * m['P@1']:.1f}",
        ]
        cells += [
            f"{m['MRR']:.3f}",
            str(r.get("train_seconds", "-")),
            str(r.get("steps", "-")),
            str(r["test_seconds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "R@k (%) by the gold tag's frequency in the full training split (pairs in each bucket in brackets):",
        "",
    ]
    head = ["variant", "seed", *[f"R@{k} {b}" for b in BUCKETS for k in (1, 10)]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        m = r["metrics"]
        cells = [r["variant"], str(r["seed"])]
        for b in BUCKETS:
            for k in (1, 10):
                v = m.get(f"R@{k}/{b}")
                cells.append("-" if v is None else f"{100 * v:.1f} ({int(m[f'pairs/{b}'])})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(records: list[dict]) -> str:
    """Mean ± std over seeds of each trained variant (R@k overall, R@1 by bucket), in percent."""
    cols = [*(f"R@{k}" for k in KS), *(f"R@1/{b}" for b in BUCKETS if b != "unseen")]
    lines = [
        "| variant | seeds | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 2),
    ]
    for name in VARIANTS:
        runs = [r["metrics"] for r in records if r["variant"] == name]
        if not runs:
            continue
        cells = []
        for c in cols:
            values = [100 * m[c] for m in runs]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(
                f"{statistics.mean(values):.1f} ± {std:.1f}" if len(values) > 1 else f"{values[0]:.1f}"
            )
        lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(out: Path, meta: dict) -> None:
    records = meta["records"]
    (out / "results.md").write_text(
        "# CEAA on ARC (MiniLM, CPU)\n\nWritten by `python scripts/ceaa_arc_results.py --data <arc_tagging> "
        "--seeds ... --variants ...` (every run's CLI commands are listed below; `--report-only` rebuilds this "
        f"file from results.json).\nSettings: {meta['settings']}.\n\nMean ± std over seeds (R@k, %; zero-shot has no seed):\n\n"
        + summary(records)
        + "\n\nEvery run:\n\n"
        + table(records)
        + "\n\nCommands:\n\n"
        + "\n".join(f"- `{c}`" for r in records for c in r["commands"])
        + "\n"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="folder with train/val/test_QC_data.csv and targets_ARC.csv")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "ceaa"))
    p.add_argument(
        "--work", default="/tmp/ceaa_arc_runs", help="logs and checkpoints of the runs (not in the repo)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--train-subsample", type=int, default=2000, help="training questions used (of 5,597)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--aug-ratio", type=float, default=0.5, help="share of questions augmented (h1, h2)")
    p.add_argument(
        "--report-only", action="store_true", help="rewrite results.md from results.json, run nothing"
    )
    args = p.parse_args()
    out = Path(args.out)
    if args.report_only:
        write_report(out, json.loads((out / "results.json").read_text()))
        return
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    previous = out / "results.json"
    if previous.is_file():  # keep earlier variants/seeds; a rerun of the same (variant, seed) replaces it
        records = json.loads(previous.read_text()).get("records", [])
    for seed in args.seeds:
        for name in args.variants:
            if name == "zero_shot" and seed != args.seeds[0]:
                continue  # no training: the seed changes nothing
            records = [r for r in records if (r["variant"], r["seed"]) != (name, seed)]
            records.append(run_variant(name, args, seed, out))
            records.sort(key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
            print(json.dumps({"variant": name, "seed": seed}), "done", flush=True)
            meta = {
                "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, shared 2-core CPU",
                "settings": {
                    k: v for k, v in vars(args).items() if k not in ("out", "work", "variants", "seeds")
                },
                "records": records,
            }
            (out / "results.json").write_text(json.dumps(meta, indent=1))
            write_report(out, meta)


if __name__ == "__main__":
    main()
