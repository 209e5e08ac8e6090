"""k-NN evaluation under real DDP (2 gloo processes) equals one process: no padded duplicates in bank or queries."""

from pathlib import Path

import pytest

from tests import ddp_runner

WORKER = Path(__file__).with_name("ddp_knn_worker.py")


def run(out: Path, devices: int) -> dict:
    return ddp_runner.run_worker(WORKER, out, devices)


def test_knn_accuracy_under_ddp_equals_single_process(tmp_path):
    single, ddp = run(tmp_path / "one.pt", 1), run(tmp_path / "two.pt", 2)
    assert single and single.keys() == ddp.keys()
    for key in single:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
