"""Every callback under real DDP (2 CPU processes, gloo) gives what one process gives on the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_callbacks_worker.py")


def run_worker(out: Path, devices: int, setup: str) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(devices), "8", setup],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=WORKER.parents[1],
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out)


def assert_close_lists(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("setup", ["swad+best", "swa"])
def test_callbacks_under_ddp_equal_single_process(tmp_path, setup):
    single = run_worker(tmp_path / "single.pt", 1, setup)
    ddp = run_worker(tmp_path / "ddp.pt", 2, setup)
    assert single["global_step"] == ddp["global_step"]
    assert single["n_averaged"] == ddp["n_averaged"] > 0
    assert_close_lists(single["params"], ddp["params"])  # the averaged weights
    # the synced per-domain validation loss is the one a single process computes
    torch.testing.assert_close(
        torch.tensor(single["real_losses"]), torch.tensor(ddp["real_losses"]), atol=1e-5, rtol=1e-5
    )
    if setup == "swad+best":
        assert single["accepted"] == ddp["accepted"] == [3, 4, 5, 6, 7]
        assert single["best_step"] == ddp["best_step"]
        assert_close_lists(list(single["best_state"].values()), list(ddp["best_state"].values()))
