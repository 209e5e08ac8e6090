"""The SWAD loss-valley rule on scripted loss sequences (start, end, early stop, each segment once)."""

import random

import pytest

from callbacks.loss_valley import LossValley


def run(losses, **kw):
    valley = LossValley(**kw)
    for i, loss in enumerate(losses):
        _, dead = valley.add(loss)
        if dead:
            return valley, i
    valley.finish()
    return valley, None


def test_converge_tolerate_and_early_stop():
    # segments:  0  1  2  3    4    5    6    7    8  9  10 11 12 13
    losses = [5, 4, 3, 2.0, 2.1, 2.2, 2.0, 2.5, 3.0, 9, 9, 9, 9, 9]
    valley, stopped_at = run(losses)
    assert valley.converge_index == 3
    assert valley.threshold == pytest.approx(1.3 * (2.0 + 2.1 + 2.2) / 3)
    # every loss in the look-back window (0..2) is above the threshold: start at the converge point
    assert valley.start_index == 3
    # segment 8 (3.0) exceeds the threshold and no later one comes back below: the valley ends at 7
    assert valley.end_index == 7
    assert valley.accepted == [3, 4, 5, 6, 7]
    # dead once the 6 latest losses (8..13) all exceed the threshold
    assert stopped_at == 13 and valley.dead


def test_lookback_starts_after_last_point_above_threshold():
    # converge at 4 (losses 4..6 = 1.0, 1.1, 1.2); threshold 1.43; in the window 1..3, segment 1 (2.0) is above,
    # so j = 2 (first after it) and averaging starts with segment 3
    losses = [9, 2.0, 1.3, 1.2, 1.0, 1.1, 1.2]
    valley, _ = run(losses)
    assert valley.converge_index == 4
    assert valley.start_index == 3
    assert valley.accepted == [3, 4, 5, 6]


def test_lookback_without_points_above_threshold_skips_oldest_in_window():
    losses = [1.3, 1.2, 1.1, 1.0, 1.0, 1.05, 1.1]
    valley, _ = run(losses)
    assert valley.converge_index == 3  # oldest of 1.0, 1.0, 1.05 is a (tied) minimum
    # window 0..2 has no loss above 1.3 * 1.0167: j = 0, start with segment 1
    assert valley.start_index == 1
    assert valley.accepted == [1, 2, 3, 4, 5, 6]


def test_bump_above_threshold_inside_valley_is_kept_contiguous():
    losses = [3, 1.0, 1.0, 1.0, 5.0, 1.0, 9, 9, 9, 9, 9, 9]
    valley, stopped_at = run(losses)
    # converge at 1 (1.0, 1.0, 1.0); segment 0 (3.0) is above the threshold, so j = 1 and the start is c = 1
    assert valley.converge_index == 1 and valley.start_index == 1
    assert valley.accepted == [1, 2, 3, 4, 5]  # the bump (4) joins: segment 5 comes back below the threshold
    assert valley.end_index == 5 and stopped_at == 11


def test_never_converges_keeps_nothing():
    valley, stopped_at = run([10 - 0.5 * i for i in range(12)])
    assert not valley.converged and valley.accepted == [] and stopped_at is None


def test_end_of_training_drops_pending_segments():
    valley, stopped_at = run([2, 1.0, 1.0, 1.0, 3.0, 3.0])
    assert stopped_at is None
    assert valley.accepted[-1] == 3 and valley.pending == []


def test_each_segment_joins_once_and_window_is_contiguous():
    rng = random.Random(0)
    for _ in range(300):
        losses = [rng.uniform(0.5, 2.0) for _ in range(rng.randint(1, 40))]
        valley = LossValley(
            n_converge=rng.randint(1, 4), n_tolerance=rng.randint(1, 7), lookback=rng.randint(0, 4)
        )
        joined = []
        for loss in losses:
            new, dead = valley.add(loss)
            joined += new
            if dead:
                break
        assert joined == valley.accepted
        assert len(set(joined)) == len(joined)
        if joined:
            assert joined == list(range(joined[0], joined[-1] + 1))
            assert valley.losses[joined[-1]] <= valley.threshold


def test_rejects_nan_and_bad_options():
    with pytest.raises(FloatingPointError):
        LossValley().add(float("nan"))
    with pytest.raises(ValueError):
        LossValley(n_converge=0)
