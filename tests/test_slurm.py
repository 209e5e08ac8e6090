"""The SLURM template on a real one-node cluster (slurmctld + slurmd + munge on this machine).

Marked `slurm`: it starts the cluster with slurm/local_cluster.sh (installing Debian's packages if needed), which
needs root; where that cannot be done the tests are skipped with the reason. CPU DDP with 2 tasks through srun.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm

JOB_ARGS = [
    "configs/quickstart.yaml",
    "--trainer.accelerator=cpu",
    "--data.init_args.steps_per_epoch=10",
    "--data.init_args.batch_size=8",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
]


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("starting the local SLURM cluster needs root (slurm/local_cluster.sh)")
    proc = subprocess.run(
        ["bash", "slurm/local_cluster.sh", "start"], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0 or not shutil.which("sbatch"):
        pytest.skip(f"the local SLURM cluster could not start: {proc.stdout[-500:]} {proc.stderr[-1500:]}")


def sbatch(run_dir: Path, name: str, *extra: str, wait: bool) -> tuple[str, Path]:
    out = run_dir.parent / f"{name}.out"
    cmd = [
        "sbatch",
        "--parsable",
        "--gres=none",
        "--ntasks-per-node=2",
        "--cpus-per-task=1",
        f"--job-name={name}",
        f"--output={out}",
    ]
    cmd += ["--wait"] if wait else []
    proc = subprocess.run(
        [*cmd, "slurm/train.sbatch", *JOB_ARGS, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "RUN_DIR": str(run_dir)},
    )
    assert proc.returncode == 0, f"{proc.stderr}\n{out.read_text() if out.exists() else ''}"
    return proc.stdout.strip().split(";")[0], out


def job_state(job: str) -> str:
    return subprocess.run(
        ["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True
    ).stdout.strip()


def final_weights(run_dir: Path) -> dict:
    (ckpt,) = run_dir.glob("*/*/checkpoints/last.ckpt")
    return torch.load(ckpt, weights_only=False)["state_dict"]


def test_ddp_job_runs_two_ranks(cluster, tmp_path):
    _, out = sbatch(tmp_path / "run", "litlab-ddp", "--trainer.max_steps=20", wait=True)
    log = out.read_text()
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log, log[-2000:]
    assert "`Trainer.fit` stopped: `max_steps=20` reached." in log


def test_sigusr1_requeues_and_resumes_to_the_same_weights(cluster, tmp_path):
    steps = "--trainer.max_steps=60"
    sbatch(tmp_path / "plain", "litlab-plain", steps, wait=True)
    run_dir = tmp_path / "signalled"
    job, out = sbatch(run_dir, "litlab-requeue", steps, wait=False)
    deadline = time.monotonic() + 480
    while not list(
        run_dir.glob("*/*/checkpoints/*.ckpt")
    ):  # the first epoch has ended: training is under way
        assert time.monotonic() < deadline, out.read_text()[-2000:] if out.exists() else "no output"
        assert job_state(job), "the job ended before it could be signalled"
        time.sleep(1)
    subprocess.run(
        ["scancel", "--signal=USR1", job], check=True
    )  # what --signal=SIGUSR1@90 sends before the limit
    while "BeginTime" not in job_state(job):  # requeued: pending until SLURM's requeue delay passes
        assert time.monotonic() < deadline, out.read_text()[-2000:]
        time.sleep(1)
    subprocess.run(["scontrol", "update", f"jobid={job}", "starttime=now"], check=True)  # skip the delay
    while job_state(job):
        assert time.monotonic() < deadline, out.read_text()[-2000:]
        time.sleep(2)
    log = out.read_text()
    assert "Requeued SLURM job" in log and "(restart 1)" in log
    assert f"Restored all states from the checkpoint at {run_dir}/hpc_ckpt_1.ckpt" in log
    assert "`Trainer.fit` stopped: `max_steps=60` reached." in log
    plain, resumed = final_weights(tmp_path / "plain"), final_weights(run_dir)
    assert plain.keys() == resumed.keys()
    assert all(torch.equal(plain[k], resumed[k]) for k in plain)
