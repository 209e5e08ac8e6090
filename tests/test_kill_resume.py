"""kill -9 a real `cli.py fit` run, rerun the same command with --ckpt_path last: same result as no kill."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def command(save_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "cli.py", "fit", "-c", "configs/quickstart.yaml",
        "--trainer.max_steps=300", "--data.init_args.steps_per_epoch=10", "--data.init_args.batch_size=8",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--test_after_fit=false",
        f"--trainer.logger.init_args.save_dir={save_dir}", *extra,
    ]  # fmt: skip


def last_weights(save_dir: Path) -> dict:
    (ckpt,) = save_dir.glob("quickstart/version_*/checkpoints/last.ckpt")
    return torch.load(ckpt, weights_only=False)["state_dict"]


def test_kill_9_then_resume_with_ckpt_path_last(tmp_path):
    subprocess.run(command(tmp_path / "plain"), cwd=ROOT, check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "quickstart/version_0/checkpoints/last.ckpt").exists():  # the first epoch is done
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # now somewhere in the following epochs
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        command(killed, "--ckpt_path=last"), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states from the checkpoint" in resumed.stderr + resumed.stdout
    assert [p.name for p in (killed / "quickstart").iterdir()] == ["version_0"]  # the same run continued
    plain, again = last_weights(tmp_path / "plain"), last_weights(killed)
    assert all(torch.equal(plain[k], again[k]) for k in plain)
