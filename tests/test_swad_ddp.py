"""SWAD under real DDP (2 CPU processes, gloo): the same average as one process on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("ddp_swad_worker.py")


def run_worker(out: Path, devices: int) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(devices), "8"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=WORKER.parents[1],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out)


def test_ddp_average_equals_single_process(tmp_path):
    single = run_worker(tmp_path / "single.pt", 1)
    ddp = run_worker(tmp_path / "ddp.pt", 2)
    assert single["accepted"] == ddp["accepted"] == [3, 4, 5, 6, 7]
    assert single["n_averaged"] == ddp["n_averaged"] == 25
    assert single["global_step"] == ddp["global_step"]
    for a, b in zip(single["params"], ddp["params"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # the synced per-domain validation loss is the one a single process computes
    torch.testing.assert_close(
        torch.tensor(single["real_losses"]), torch.tensor(ddp["real_losses"]), atol=1e-5, rtol=1e-5
    )
