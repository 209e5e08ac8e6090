"""k-NN evaluation under real DDP (2 gloo processes) equals one process: no padded duplicates in bank or queries."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_knn_worker.py")


def run(out: Path, devices: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), str(out), str(devices)], capture_output=True, text=True,
                          timeout=600, env=env, cwd=WORKER.parents[1])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out)


def test_knn_accuracy_under_ddp_equals_single_process(tmp_path):
    single, ddp = run(tmp_path / "one.pt", 1), run(tmp_path / "two.pt", 2)
    assert single and single.keys() == ddp.keys()
    for key in single:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
