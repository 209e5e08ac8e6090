"""The shared half-open expert router: every timestep has exactly one owner, and training draws agree with routing."""

import pytest
import torch

from lightning_modules.diffusion.router import IntervalRouter


def test_every_timestep_has_exactly_one_expert_and_boundaries_go_to_the_interval_they_start():
    router = IntervalRouter([0, 100, 250, 1000], 1000)
    owners = router.expert_of(torch.arange(1000))
    counts = torch.bincount(owners, minlength=3)
    assert counts.tolist() == [100, 150, 750]
    assert router.expert_of(99).item() == 0 and router.expert_of(100).item() == 1
    assert router.expert_of(249).item() == 1 and router.expert_of(250).item() == 2
    assert router.expert_of(999).item() == 2


def test_training_draws_route_back_to_the_expert_that_drew_them():
    router = IntervalRouter.uniform(1000, 4)
    g = torch.Generator().manual_seed(0)
    for e in range(4):
        t = router.draw(e, 2000, generator=g)
        assert (router.expert_of(t) == e).all()
        low, high = router.interval(e)
        assert t.min() >= low and t.max() < high
        assert t.min() == low and t.max() == high - 1  # both ends of the interval are drawn


def test_bad_boundaries_and_timesteps_are_rejected():
    with pytest.raises(ValueError, match="strictly increasing"):
        IntervalRouter([0, 500, 500, 1000], 1000)
    with pytest.raises(ValueError, match="from 0 to 1000"):
        IntervalRouter([0, 500, 999], 1000)
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        IntervalRouter.uniform(1000, 5).expert_of(torch.tensor([1000]))
