"""CATs' PCK under DDP: 2 gloo processes holding unequal shares of the pairs give the single-process PCK."""

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.cats.metrics import PCK


def pairs(n: int = 7, k: int = 6, seed: int = 0):
    """Random pairs with 2..k valid keypoints each (padded with -1), thresholds and 3 categories."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(n, k, 2, generator=g) * 48
    pred = gt + torch.randn(n, k, 2, generator=g) * 4
    n_pts = torch.randint(2, k + 1, (n,), generator=g)
    pad = torch.arange(k)[None, :] >= n_pts[:, None]
    gt[pad], pred[pad] = -1, -1
    return pred, gt, n_pts, torch.full((n,), 48.0), torch.tensor([0, 1, 2, 0, 1, 2, 0])


def _worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        metric = PCK(num_categories=3)
        metric.update(*(x[rank::2] for x in pairs()))  # rank 0: 4 pairs, rank 1: 3 pairs
        out = metric.compute()  # torchmetrics sums the states across ranks first
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_pck_over_two_processes_equals_one_process(tmp_path):
    ctx = mp.start_processes(
        _worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("DDP worker processes did not finish within 120 s")
    single = PCK(num_categories=3)
    single.update(*pairs())
    expected = single.compute()
    assert 0 < expected["overall"][1] < 100  # a case where the answer is neither trivial bound
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["overall"], expected["overall"])
        torch.testing.assert_close(got["per_category"], expected["per_category"], equal_nan=True)
