"""Wall time of a short CPU DDP run with 1 vs 2 processes at the same global batch (the scaling ratio).

    python benchmarks/ddp_scaling.py                          # quickstart config, global batch 320, 60 timed steps
    python benchmarks/ddp_scaling.py --steps 100 --global-batch 32 --repeats 3

Each run is the real `python cli.py fit -c configs/quickstart.yaml` in a subprocess, with
`--trainer.strategy ddp --trainer.devices N` on the CPU (gloo) and the per-process batch set so that the global
batch is the same for N = 1 and 2 (RotatedDigits draws `batch_size` images per source domain per process, so the
global batch is N x batch_size x 5). Validation and the after-fit test are off and an epoch is longer than the run,
so the timed window (up to the end of the last step, before the final checkpoint) holds only training steps. `StepTimer` (added with `--trainer.callbacks+=`)
times the steps after the first `--warmup` on rank 0; the total wall time of the subprocess (start-up, process
group, data) is printed too. Threads: Lightning gives each process cpu_count / N threads unless OMP_NUM_THREADS
is set; `--threads 1` sets it, so 1 and 2 processes compare at one thread each. On a busy machine the wall-time
ratio is inflated (the scheduler shares the cores per thread, so 2 processes also get more of the machine than
1); rank 0's CPU seconds per step (`time.process_time`, all its threads) is less sensitive to other loads: with
ideal scaling it halves from 1 to 2 processes, and what exceeds half is DDP's extra work per process. The ratio is t(1 process) / t(2 processes) per step: above 1 means DDP helped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"STEP_TIMER steps=(\d+) seconds=([0-9.]+) cpu_seconds=([0-9.]+)")


class StepTimer(L.Callback):
    """Rank 0 prints the wall time of the training steps after the first ``warmup`` (all ranks step together)."""

    def __init__(self, warmup: int = 5) -> None:
        self.warmup, self.t0, self.t1, self.first = warmup, None, None, None
        self.c0 = self.c1 = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.first is None:
            self.first = trainer.global_step - 1
        if trainer.global_step == self.first + self.warmup:
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        if trainer.global_step == trainer.max_steps:
            self.t1, self.c1 = time.perf_counter(), time.process_time()

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.t0 is not None and self.t1 is not None:
            steps = trainer.global_step - (self.first + self.warmup)
            cpu = self.c1 - self.c0
            print(
                f"STEP_TIMER steps={steps} seconds={self.t1 - self.t0:.4f} cpu_seconds={cpu:.4f}", flush=True
            )


def run(
    devices: int, global_batch: int, steps: int, warmup: int, tmp: Path, threads: int | None = None
) -> dict:
    """One `cli.py fit` with `devices` CPU processes; returns the timed steps, their seconds and the wall time."""
    domains = 5  # quickstart: 6 RotatedDigits domains, 1 held out
    per_process = global_batch // (devices * domains)
    if per_process * devices * domains != global_batch:
        raise ValueError(f"global batch {global_batch} is not a multiple of {devices} x {domains} domains")
    args = [
        sys.executable,
        "cli.py",
        "fit",
        "-c",
        "configs/quickstart.yaml",
        "--trainer.accelerator=cpu",
        "--trainer.strategy=ddp",
        f"--trainer.devices={devices}",
        f"--trainer.max_steps={warmup + steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp}",
        f"--trainer.logger.init_args.save_dir={tmp}",
        f"--data.init_args.batch_size={per_process}",
        f"--data.init_args.steps_per_epoch={warmup + steps + 10}",
        "--test_after_fit=false",
        "--trainer.callbacks+=benchmarks.ddp_scaling.StepTimer",
        f"--trainer.callbacks.init_args.warmup={warmup}",
    ]
    # SWAD and BestValidationWeights stay in the callbacks (as in the config) but see no validation
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"cli.py fit with {devices} process(es) failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )
    found = PATTERN.findall(proc.stdout + proc.stderr)
    if len(found) != 1:
        raise RuntimeError(f"expected one STEP_TIMER line, got {found}:\n{proc.stdout[-2000:]}")
    timed, seconds, cpu = int(found[0][0]), float(found[0][1]), float(found[0][2])
    return {
        "devices": devices,
        "steps": timed,
        "seconds": seconds,
        "s_per_step": seconds / timed,
        "rank0_cpu_s_per_step": cpu / timed,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument(
        "--global-batch", type=int, default=320, help="multiple of 10 (2 processes x 5 domains)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per process count (alternating)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP_NUM_THREADS per process (default: Lightning's cpus / N)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/ddp_scaling.json"))
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for devices in (1, 2):
                rows.append(
                    run(devices, args.global_batch, args.steps, args.warmup, Path(tmp) / f"{devices}_{r}")
                )
    best = {d: min(x["s_per_step"] for x in rows if x["devices"] == d) for d in (1, 2)}
    wall = {d: min(x["wall_s"] for x in rows if x["devices"] == d) for d in (1, 2)}
    print(
        f"\nCPU DDP scaling, configs/quickstart.yaml, global batch {args.global_batch}, {os.cpu_count()} CPUs"
    )
    print(f"{'processes':>9s} {'timed steps':>11s} {'s/step':>8s} {'rank-0 CPU s/step':>18s} {'wall s':>8s}")
    for x in rows:
        print(
            f"{x['devices']:9d} {x['steps']:11d} {x['s_per_step']:8.4f} "
            f"{x['rank0_cpu_s_per_step']:18.4f} {x['wall_s']:8.1f}"
        )
    ratio = best[1] / best[2]
    print(
        f"scaling ratio t(1)/t(2) per step (best of {args.repeats}): {ratio:.2f}; whole run: {wall[1] / wall[2]:.2f}"
    )
    result = {
        "global_batch": args.global_batch,
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "rows": rows,
        "step_ratio": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
