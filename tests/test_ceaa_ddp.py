"""CEAA under 2-process DDP (gloo, CPU): the gathered in-batch loss and its gradients equal one process's."""

from pathlib import Path

import torch

from tests.ddp_runner import run_worker

WORKER = Path(__file__).resolve().parent / "ddp_ceaa_worker.py"


def test_gathered_loss_and_gradients_match_single_process(tmp_path):
    res = run_worker(WORKER, tmp_path / "out.pt", timeout=300)
    # 6 queries; tags deduplicated across ranks: food chain, MAT, weather, TRAINONLY -> 4 columns, one gold each
    assert res["ddp_labels"].shape == res["labels"].shape == (6, 4)
    assert res["ddp_labels"].sum() == 6
    torch.testing.assert_close(res["ddp_loss"], res["loss"], rtol=1e-5, atol=1e-6)
    assert set(res["ddp_grads"]) == set(res["grads"])
    for name, g in res["grads"].items():
        torch.testing.assert_close(res["ddp_grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)
