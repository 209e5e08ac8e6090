"""Time from SIGUSR1 to the first training step of the requeued, resumed job, on the local SLURM cluster.

    sudo bash slurm/local_cluster.sh start          # once (Debian packages, munge, one-node slurm.conf)
    python benchmarks/slurm_requeue_latency.py      # needs root, as tests/test_slurm.py

It submits `slurm/train.sbatch configs/quickstart.yaml` with 2 CPU DDP tasks through srun (as tests/test_slurm.py
does), waits until training runs, sends SIGUSR1 to the job (`scancel --signal=USR1`, what `--signal=SIGUSR1@90`
sends before the time limit), and parses the job log. Lightning's SLURM handler then writes
`hpc_ckpt_<n>.ckpt` and runs `scontrol requeue`; SLURM holds a requeued job for a while before it may start
again (BeginTime, a cluster setting): like the test, the script releases it at once with
`scontrol update starttime=now` and reports that hold separately. Timestamps come from `StepStamp`, a callback
added with `--trainer.callbacks+=` (no change to cli.py): rank 0 prints the wall clock when fit starts and at
the end of the first training step of every (re)start, with SLURM's restart count.

Printed phases (seconds): signal -> job requeued (checkpoint written, tasks ended, job pending); requeued ->
released by us (polling only); released -> fit starts again (scheduling, srun, Python and torch imports, DDP
process group, model weights restored: Lightning restores them before `on_fit_start` under DDP); fit start ->
first resumed step done (optimizer and loop state, data, one step); and the total from the signal to the first
resumed step, without SLURM's requeue hold.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"STEP_STAMP (\w+) restart=(\d+) step=(\d+) time=([0-9.]+)")
JOB_ARGS = [
    "configs/quickstart.yaml",
    "--trainer.accelerator=cpu",
    "--data.init_args.steps_per_epoch=10",
    "--data.init_args.batch_size=8",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
    "--trainer.callbacks+=benchmarks.slurm_requeue_latency.StepStamp",
]


class StepStamp(L.Callback):
    """Rank 0 prints ``STEP_STAMP fit_start|first_step restart=<SLURM_RESTART_COUNT> step=<n> time=<unix s>``."""

    def __init__(self) -> None:
        self.stamped = False

    def _stamp(self, trainer: L.Trainer, what: str) -> None:
        if trainer.is_global_zero:
            restart = os.environ.get("SLURM_RESTART_COUNT", "0")
            print(
                f"STEP_STAMP {what} restart={restart} step={trainer.global_step} time={time.time():.3f}",
                flush=True,
            )

    def on_fit_start(self, trainer, pl_module) -> None:
        self._stamp(trainer, "fit_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.stamped:
            self.stamped = True
            self._stamp(trainer, "first_step")


def job_state(job: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True)
    return out.stdout.strip()


def wait_for(condition, what: str, log: Path, timeout: float, every: float = 0.2) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out waiting for {what}:\n{log.read_text()[-3000:] if log.exists() else ''}"
            )
        time.sleep(every)
    return time.time()


def stamps(log: Path) -> list[tuple[str, int, int, float]]:
    text = log.read_text() if log.exists() else ""
    return [(w, int(r), int(s), float(t)) for w, r, s, t in STAMP.findall(text)]


def measure(tmp: Path, max_steps: int, timeout: float) -> dict:
    run_dir, log = tmp / "run", tmp / "requeue.out"
    cmd = [
        "sbatch",
        "--parsable",
        "--gres=none",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        "--job-name=litlab-latency",
        f"--output={log}",
        "slurm/train.sbatch",
        *JOB_ARGS,
        f"--trainer.max_steps={max_steps}",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "RUN_DIR": str(run_dir)}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed: {proc.stderr}")
    job = proc.stdout.strip().split(";")[0]
    try:
        # training is under way once the first checkpoint exists (an epoch = 10 steps has ended), as in the test
        wait_for(lambda: list(run_dir.glob("*/*/checkpoints/*.ckpt")), "the first checkpoint", log, timeout)
        t_signal = time.time()
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        t_requeued = wait_for(lambda: "BeginTime" in job_state(job), "the requeue", log, timeout)
        subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)
        t_released = time.time()
        wait_for(
            lambda: any(w == "first_step" and r >= 1 for w, r, _, _ in stamps(log)),
            "the resumed step",
            log,
            timeout,
        )
        wait_for(lambda: not job_state(job), "the job's end", log, timeout, every=1.0)
    finally:
        if job_state(job):
            subprocess.run(["scancel", job])
    found = stamps(log)
    fit_start = next(t for w, r, _, t in found if w == "fit_start" and r >= 1)
    first = next((s, t) for w, r, s, t in found if w == "first_step" and r >= 1)
    text = log.read_text()
    if "Restored all states from the checkpoint" not in text:
        raise RuntimeError(f"the requeued job did not resume from its checkpoint:\n{text[-3000:]}")
    return {
        "signal_to_requeued_s": t_requeued - t_signal,
        "requeued_to_released_s": t_released - t_requeued,
        "released_to_fit_start_s": fit_start - t_released,
        "fit_start_to_first_step_s": first[1] - fit_start,
        "signal_to_first_resumed_step_s": first[1] - t_signal,
        "resumed_at_step": first[0],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=400, help="long enough to still run when signalled")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=Path("outputs/slurm_requeue_latency.json"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the local SLURM cluster needs root (slurm/local_cluster.sh)")
    start = subprocess.run(
        ["bash", "slurm/local_cluster.sh", "start"], cwd=ROOT, capture_output=True, text=True
    )
    if start.returncode != 0 or not shutil.which("sbatch"):
        raise SystemExit(
            f"the local SLURM cluster could not start:\n{start.stdout[-1000:]}{start.stderr[-2000:]}"
        )
    rows = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(Path(tmp), args.max_steps, args.timeout))
    print(
        f"\nSIGUSR1 -> first resumed training step, local SLURM cluster, 2 CPU DDP tasks, {os.cpu_count()} CPUs"
    )
    for key in rows[0]:
        print(f"{key:34s} " + " ".join(f"{r[key]:8.2f}" for r in rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
