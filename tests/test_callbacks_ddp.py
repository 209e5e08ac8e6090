"""Every callback under real DDP (2 CPU processes, gloo) gives what one process gives on the same global batch.

Each test runs a standalone worker (Lightning's ``strategy="ddp"``, gloo, ``OMP_NUM_THREADS=1``) once with 1 and
once with 2 processes on the same global batch and compares what the callbacks produce. Where each callback's
DDP test lives:

- SWAD, SWA (`callbacks/swad.py`), BestValidationWeights (`callbacks/best_weights.py`), EMA (`callbacks/ema.py`)
  and SampleGrid (`callbacks/sample_grid.py`, rank-0 files compared pixel by pixel): here, with
  ``tests/ddp_callbacks_worker.py``.
- OnlineKNN (`callbacks/knn.py`): ``tests/test_knn_ddp.py``.
- ScoreWeighting (`callbacks/scorecl.py`, weights from the gathered pair gaps): ``tests/test_simclr_ddp.py``.
- TimestepMTL (`callbacks/mtl/`; UW, PCGrad, NashMTL solve and reuse steps): ``tests/test_mtl_ddp.py``.
- LossValley (`callbacks/loss_valley.py`) is SWAD's valley detector and runs inside the SWAD setups here.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests import ddp_runner

WORKER = Path(__file__).with_name("ddp_callbacks_worker.py")


def run_worker(out: Path, devices: int, setup: str) -> dict:
    return ddp_runner.run_worker(WORKER, out, devices, 8, setup)


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


def test_ema_and_sample_grid_under_ddp_equal_single_process(tmp_path):
    single = run_worker(tmp_path / "single.pt", 1, "ema")
    ddp = run_worker(tmp_path / "ddp.pt", 2, "ema")
    assert single["global_step"] == ddp["global_step"] == 20
    assert single["ema"].keys() == ddp["ema"].keys()
    for name, a in single["ema"].items():
        torch.testing.assert_close(a, ddp["ema"][name], atol=1e-6, rtol=1e-5, msg=name)
    # the EMA is a real average (not the live weights), and the module ends fit holding it
    for variants in (single["variants"], ddp["variants"]):
        assert any(not torch.allclose(variants["last"][k], variants["ema"][k]) for k in variants["ema"])
    assert_close_lists(single["params"], ddp["params"])
    assert_close_lists(single["params"], [single["ema"][k] for k in single["ema"]])
    # validation ran with the EMA weights, synced over ranks
    torch.testing.assert_close(
        torch.tensor(single["real_losses"]), torch.tensor(ddp["real_losses"]), atol=1e-5, rtol=1e-5
    )
    # SampleGrid: rank 0 writes the same grid after every validation as the single process
    grids = {run: sorted((tmp_path / run).glob("sample_grids/step_*.png")) for run in ("single", "ddp")}
    assert [p.name for p in grids["single"]] == [p.name for p in grids["ddp"]]
    assert len(grids["single"]) == 4
    for a, b in zip(grids["single"], grids["ddp"], strict=True):
        pa, pb = (np.asarray(Image.open(p), dtype=int) for p in (a, b))
        assert pa.shape == pb.shape and np.abs(pa - pb).max() <= 1, a.name  # 8-bit rounding at most
