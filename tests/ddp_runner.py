"""Run a DDP worker script in a subprocess and load what it saved: the scaffolding of every 2-process test.

The worker is called as ``python WORKER OUT ARGS...`` from the repository root with one CPU thread per process
(two gloo processes on two cores), and must save its results to OUT with ``torch.save``.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_worker(worker: Path, out: Path, *args: object, timeout: int = 600) -> Any:
    """Run ``worker`` with ``out`` and ``args``; fail with its output if it fails; return ``torch.load(out)``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(worker), str(out), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=False)
