"""SimCLR + ScoreCL under real DDP (2 CPU processes, gloo) equals one process on the global batch: NT-Xent negatives
are gathered across ranks, and ScoreCL's pair gaps are gathered before normalising."""

from pathlib import Path

import pytest
import torch

from tests import ddp_runner

WORKER = Path(__file__).with_name("ddp_simclr_worker.py")
GLOBAL_BATCH = 16


def run_worker(out: Path, devices: int, *extra: str) -> list[dict]:
    return ddp_runner.run_worker(WORKER, out, devices, GLOBAL_BATCH, *extra, timeout=300)


def test_ddp_simclr_with_scorecl_equals_single_process(tmp_path):
    (single,) = run_worker(tmp_path / "single.pt", 1, "scorecl")
    rank0, rank1 = run_worker(tmp_path / "ddp.pt", 2, "scorecl")
    # step 0: rank r holds samples r, r+2, ... of the global batch; its per-pair losses use all 2N negatives
    torch.testing.assert_close(rank0["step0"]["pair"], single["step0"]["pair"][0::2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rank1["step0"]["pair"], single["step0"]["pair"][1::2], atol=1e-5, rtol=1e-5)
    # with local negatives only the losses would differ: the gather matters
    assert not torch.allclose(rank0["step0"]["local_only"], rank0["step0"]["pair"], atol=1e-3)
    for a, b in zip(single["params"], rank0["params"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # ScoreCL: gaps gathered before normalising, so each rank's weights are its slice of the global ones
    w = single["weights"]
    torch.testing.assert_close(rank0["weights"], w[0::2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rank1["weights"], w[1::2], atol=1e-5, rtol=1e-4)
    assert torch.cat([rank0["weights"], rank1["weights"]]).mean().item() == pytest.approx(1.0, abs=1e-5)
    assert rank0["weights"].mean().item() != pytest.approx(1.0, abs=1e-4)  # not a per-rank normalisation
