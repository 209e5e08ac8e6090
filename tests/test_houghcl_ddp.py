"""DenseCL queues under real DDP (2 CPU processes, gloo) equal one process on the global batch: keys are
all-gathered (in rank order) before they are enqueued, and the queue wraps around identically."""

from pathlib import Path

import torch

from tests import ddp_runner

WORKER = Path(__file__).with_name("ddp_houghcl_worker.py")
GLOBAL_BATCH = 16


def run_worker(out: Path, devices: int) -> list[dict]:
    return ddp_runner.run_worker(WORKER, out, devices, GLOBAL_BATCH, timeout=300)


def test_ddp_queues_equal_single_process(tmp_path):
    (single,) = run_worker(tmp_path / "single.pt", 1)
    rank0, rank1 = run_worker(tmp_path / "ddp.pt", 2)
    # 3 steps of 16 keys into a queue of 32: rows 0-15 hold step 2 (wrapped), rows 16-31 step 1
    assert single["ptr"] == rank0["ptr"] == rank1["ptr"] == 16
    assert not torch.allclose(single["queue_global"], single["initial"])
    for rank in (rank0, rank1):
        torch.testing.assert_close(rank["queue_global"], single["queue_global"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(rank["queue_dense"], single["queue_dense"], atol=1e-5, rtol=1e-4)
        for a, b in zip(single["params"], rank["params"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        for a, b in zip(single["momentum"], rank["momentum"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # every enqueued key is unit-norm and each rank's half appears (not only the local keys)
    torch.testing.assert_close(rank0["queue_global"].norm(dim=1), torch.ones(32), atol=1e-5, rtol=0)
