"""Downstream segmentation for both pair rules: digits-VOC mIoU from Hough- vs arg-max-pretrained backbones.

    python scripts/houghcl_digits_seg_seeds.py --seeds 0 1 2 --out logs/houghcl_seg_seeds [--threads 1]

For each seed s: pre-train the digits demo with the Hough rule (`configs/houghcl/digits.yaml`) and with DenseCL's
arg-max (`digits_argmax.yaml`), both with `--seed_everything=s` (the same runs as `houghcl_digits_seeds.py`; pass
`--pretrained-dir <its --out>` to reuse them), then fine-tune `configs/houghcl/digits_seg.yaml` with seed s from
each backbone and from a random initialisation (the control), for each protocol (`finetune`: whole network;
`frozen`: head only). The digits-VOC set is generated once (`scripts/houghcl_make_digits_voc.py`, seed 0) unless
`--voc-root` points to one. Each row is appended to `<out>/seg_runs.csv` as soon as it is measured; the summary
(mean +- std over seeds) is printed and written as markdown to `--table` (default
`docs/results/houghcl/digits_seg.md`). On a shared CPU, `--threads 1` (OMP_NUM_THREADS of each run) was much
faster in our runs than torch's default of one thread per core. Finished runs are reused when the sweep is rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = {"hough": "configs/houghcl/digits.yaml", "argmax": "configs/houghcl/digits_argmax.yaml"}
SEG_CONFIG = "configs/houghcl/digits_seg.yaml"
PROTOCOLS = {
    "finetune": ["--model.init_args.freeze_backbone=false"],
    "frozen": ["--model.init_args.freeze_backbone=true"],
}


def cli(args: list[str], threads: int | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    cmd = [sys.executable, "cli.py", *args, "--trainer.enable_progress_bar=false"]
    subprocess.run(cmd, cwd=ROOT, check=True, env=env)


def pretrained_checkpoint(rule: str, seed: int, folder: Path) -> Path:
    """The last checkpoint of the `rule` digits pre-training with `seed` under `folder` (trained if absent)."""
    save = folder / f"{Path(PRETRAIN[rule]).stem}_s{seed}"
    found = sorted(save.rglob("last.ckpt"))
    if not found:
        cli(
            [
                "fit",
                "-c",
                PRETRAIN[rule],
                f"--seed_everything={seed}",
                f"--trainer.logger.init_args.save_dir={save}",
                f"--trainer.default_root_dir={save}",
            ]
        )
        found = sorted(save.rglob("last.ckpt"))
    return found[-1]


def segment(
    init: Path | None,
    protocol: str,
    seed: int,
    voc_root: Path,
    save: Path,
    extra: list[str],
    threads: int | None,
) -> dict:
    """Fine-tune digits_seg.yaml; return the test mIoU and pixel accuracy of the last weights (an earlier run's
    results in `save` are reused, so an interrupted sweep continues)."""
    done = sorted(save.rglob("test_results.json"))
    if done:
        results = json.loads(done[-1].read_text())["last"]
        return {"miou": results["test/miou"], "pixel_acc": results["test/pixel_acc"]}
    args = [
        "fit",
        "-c",
        SEG_CONFIG,
        f"--seed_everything={seed}",
        f"--data.init_args.root={voc_root}",
        f"--trainer.logger.init_args.save_dir={save}",
        f"--trainer.default_root_dir={save}",
        *PROTOCOLS[protocol],
        *extra,
    ]
    if init is not None:
        args.append(f"--model.init_args.init_from={init}")
    cli(args, threads)
    results = json.loads(sorted(save.rglob("test_results.json"))[-1].read_text())["last"]
    return {"miou": results["test/miou"], "pixel_acc": results["test/pixel_acc"]}


def summarise(table: pd.DataFrame) -> str:
    agg = table.groupby(["protocol", "init"])[["miou", "pixel_acc"]].agg(["mean", "std", "count"])
    lines = ["| protocol | backbone init | mIoU (%) | pixel acc. (%) | seeds |", "|---|---|---|---|---|"]
    for (protocol, init), row in agg.iterrows():
        lines.append(
            f"| {protocol} | {init} | {100 * row[('miou', 'mean')]:.2f} +- {100 * row[('miou', 'std')]:.2f} | "
            f"{100 * row[('pixel_acc', 'mean')]:.2f} +- {100 * row[('pixel_acc', 'std')]:.2f} | "
            f"{int(row[('miou', 'count')])} |"
        )
    runs = ["| protocol | backbone init | seed | mIoU (%) | pixel acc. (%) |", "|---|---|---|---|---|"]
    for r in table.itertuples():
        runs.append(f"| {r.protocol} | {r.init} | {r.seed} | {100 * r.miou:.2f} | {100 * r.pixel_acc:.2f} |")
    return "\n".join(lines) + "\n\nPer run:\n\n" + "\n".join(runs) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "houghcl_seg_seeds")
    parser.add_argument(
        "--pretrained-dir", type=Path, default=None, help="houghcl_digits_seeds.py --out to reuse"
    )
    parser.add_argument("--voc-root", type=Path, default=None, help="an existing digits-VOC folder")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--table", type=Path, default=ROOT / "docs" / "results" / "houghcl" / "digits_seg.md")
    parser.add_argument(
        "--extra", nargs="*", default=[], help="extra CLI overrides for every segmentation run"
    )
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the segmentation runs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    voc_root = args.voc_root or args.out / "digits_voc"
    if not (voc_root / "ImageSets" / "Segmentation" / "val.txt").is_file():
        subprocess.run(
            [sys.executable, "scripts/houghcl_make_digits_voc.py", str(voc_root)], cwd=ROOT, check=True
        )
    pretrained_dir = args.pretrained_dir or args.out / "pretrain"
    csv = args.out / "seg_runs.csv"
    rows = []
    for seed in args.seeds:
        inits = {rule: pretrained_checkpoint(rule, seed, pretrained_dir) for rule in PRETRAIN}
        inits["random"] = None
        for protocol in args.protocols:
            for name, init in inits.items():
                save = args.out / f"seg_{protocol}_{name}_s{seed}"
                rows.append(
                    {
                        "protocol": protocol,
                        "init": name,
                        "seed": seed,
                        **segment(init, protocol, seed, voc_root, save, args.extra, args.threads),
                    }
                )
                print(rows[-1], flush=True)
                pd.DataFrame(rows).to_csv(csv, index=False)
    report = summarise(pd.DataFrame(rows))
    print(report)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(report)


if __name__ == "__main__":
    main()
