"""TimestepMTL under real DDP (2 CPU processes, gloo): the same update as one process on the global batch.

UW relies on DDP's own gradient averaging (its log-variances are module parameters); PCGrad and NashMTL
all-reduce the per-cluster gradients before the surgery; NashMTL between re-solves all-reduces the gradient of its
alpha-weighted loss. Both the applied gradients (every step) and the final parameters are compared; NashMTL runs
3 steps with a re-solve every 2, so it covers solve steps (0, 2) and a reuse step (1).
"""

from pathlib import Path

import pytest
import torch

from tests import ddp_runner

WORKER = Path(__file__).with_name("ddp_mtl_worker.py")


STEPS = {"uw": 2, "pcgrad": 2, "nash": 3}


def run_worker(out: Path, devices: int, method: str) -> dict:
    return ddp_runner.run_worker(WORKER, out, devices, method, STEPS[method], timeout=300)


@pytest.mark.parametrize("method", ["uw", "pcgrad", "nash"])
def test_two_processes_equal_one_on_the_global_batch(tmp_path, method):
    single = run_worker(tmp_path / "single.pt", 1, method)
    ddp = run_worker(tmp_path / "ddp.pt", 2, method)
    steps = STEPS[method]
    assert single["global_step"] == ddp["global_step"] == steps
    assert len(single["grads"]) == len(ddp["grads"]) == steps
    for a, b in zip(single["grads"], ddp["grads"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert single["state"].keys() == ddp["state"].keys()
    for name, a in single["state"].items():
        torch.testing.assert_close(a, ddp["state"][name], atol=3e-5, rtol=1e-5, msg=name)  # lr 1e-3
    if method == "uw":  # the log-variances are trained and synchronized too
        assert single["state"]["loss_reducer.uw.log_vars"].abs().min() > 0
    if method == "nash":  # the same weights on every step; step 1 reuses step 0's, step 2 re-solves
        for a, b in zip(single["alphas"], ddp["alphas"], strict=True):
            assert a is not None and b is not None
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
        assert torch.equal(single["alphas"][1], single["alphas"][0])
        assert (single["alphas"][0] > 0).all()
