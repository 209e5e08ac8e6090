"""MEME's parts: routing to exactly one expert, soft-assignment frequencies, the mixer's channel split."""

import math

import pytest
import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from lightning_modules.diffusion.router import IntervalRouter
from lightning_modules.meme.assignment import TimestepAssignment
from lightning_modules.meme.module import MEMEModule, RoutedExperts
from lightning_modules.meme.nets import FrequencyMixer, IUNet, expert_ratios, split_channels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ConstantExpert(nn.Module):
    """Predicts its own index everywhere and records the timesteps it was called with."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index, self.seen = index, []

    def forward(self, x, t):
        self.seen.append(torch.as_tensor(t).flatten().clone())
        return UNet2DOutput(sample=torch.full_like(x, float(self.index)))


def stub_experts(router: IntervalRouter) -> RoutedExperts:
    return RoutedExperts([ConstantExpert(e) for e in range(router.num_experts)], router)


def test_every_timestep_goes_to_exactly_one_expert_row_by_row():
    router = IntervalRouter([0, 100, 400, 401, 1000], 1000)
    net = stub_experts(router)
    t = torch.randperm(1000)  # one batch mixing every timestep
    out = net(torch.zeros(1000, 1, 2, 2), t).sample[:, 0, 0, 0].long()
    expected = torch.bucketize(t, torch.tensor([100, 400, 401]), right=True)
    assert torch.equal(out, expected)
    seen = torch.cat([torch.cat(e.seen) for e in net.experts])
    assert torch.equal(seen.sort().values, torch.arange(1000))  # each row evaluated once, by one expert
    for e in net.experts:
        low, high = router.interval(e.index)
        assert all(((s >= low) & (s < high)).all() for s in e.seen)


def test_training_draws_and_sampling_steps_agree_at_the_boundaries():
    module = MEMEModule(
        input_shape=(1, 4, 4),
        expert_net={"block_out_channels": [8], "head_dim": 4, "norm_num_groups": 4},
        ratio_stage_scale=[1.0],
        sample_steps=50,
    )
    module.net = stub_experts(module.router)
    for e in range(4):  # hard assignment: every training draw routes back to the expert that drew it
        t = module.assignment.draw(e, 4000, generator=torch.Generator().manual_seed(e))
        low, high = module.router.interval(e)
        assert t.min() == low and t.max() == high - 1
        assert (module.router.expert_of(t) == e).all()
    module.generate([0, 1, 2])
    calls = [len(e.seen) for e in module.net.experts]
    assert calls == module.steps_per_expert() and sum(calls) == 50
    assert calls == [13, 12, 13, 12]  # DDIM "leading" spacing: 0, 20, ..., 980 (logged, spec section 7)
    for e in module.net.experts:
        low, high = module.router.interval(e.index)
        assert all(((s >= low) & (s < high)).all() and s.numel() == 3 for s in e.seen)


@pytest.mark.parametrize("outside", ["uniform_all", "uniform_outside", "neighbors"])
def test_soft_assignment_frequencies_match_the_configured_probabilities(outside):
    router = IntervalRouter.uniform(1000, 4)
    p = [0.8, 0.4, 0.2, 0.1]
    assignment = TimestepAssignment(router, "soft", p, outside)
    n = 40_000
    for e in range(4):
        t = assignment.draw(e, n, generator=torch.Generator().manual_seed(100 + e))
        low, high = router.interval(e)
        inside = ((t >= low) & (t < high)).float().mean().item()
        # uniform_all can land inside the own interval (a quarter of T) on an "outside" draw
        q = p[e] + (1 - p[e]) * 0.25 if outside == "uniform_all" else p[e]
        assert abs(inside - q) < 6 * math.sqrt(q * (1 - q) / n)  # 6 sigma: < 1e-8 chance of a false failure
        owners = torch.bincount(router.expert_of(t), minlength=4).float() / n
        if outside == "neighbors":
            far = [j for j in range(4) if abs(j - e) > 1]
            assert owners[far].sum() == 0
            near = [j for j in (e - 1, e + 1) if 0 <= j < 4]
            for j in near:  # the neighbours share the outside draws by interval length
                assert abs(owners[j] - (1 - p[e]) / len(near)) < 0.02
        elif outside == "uniform_outside":
            for j in range(4):
                if j != e:
                    assert abs(owners[j] - (1 - p[e]) / 3) < 0.02


def test_hard_assignment_and_bad_probabilities():
    router = IntervalRouter.uniform(1000, 4)
    t = TimestepAssignment(router, "hard").draw(2, 1000)
    assert ((t >= 500) & (t < 750)).all()
    with pytest.raises(ValueError, match="one probability per expert"):
        TimestepAssignment(router, "soft", [0.5, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        TimestepAssignment(router, "soft", [0.5, 0.5, 1.5, 0.1])
    with pytest.raises(ValueError, match="assignment must be"):
        TimestepAssignment(router, "sometimes")


@pytest.mark.parametrize("channels", [16, 32, 48])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.6, 0.75, 1.0])
def test_mixer_channel_split_matches_the_ratio(channels, ratio):
    mixer = FrequencyMixer(channels, ratio, head_dim=8)
    high, low = split_channels(channels, ratio)
    assert high % 2 == 0 and high + low == channels and abs(high - ratio * channels) <= 1
    assert (mixer.high_channels, mixer.low_channels) == (high, low)
    if high:
        conv_in = mixer.high_pool[1].weight.shape[1] + mixer.high_dw[0].weight.shape[1]
        assert conv_in == high
    else:
        assert mixer.high_pool is None and mixer.high_dw is None
    if low:
        assert mixer.attention.to_q.in_features == low
    else:
        assert mixer.attention is None
    assert mixer(torch.randn(2, channels, 8, 8)).shape == (2, channels, 8, 8)


def test_ratio_one_is_pure_convolution_and_ratio_zero_pure_attention():
    torch.manual_seed(0)
    conv, attn = FrequencyMixer(16, 1.0, pool=1), FrequencyMixer(16, 0.0, pool=1)
    assert not any("attention" in n for n, _ in conv.named_modules())
    assert not any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 1 for m in attn.modules()
    )
    x = torch.randn(1, 16, 8, 8)
    far = x.clone()
    far[:, :, 0, 0] += 5.0  # a change at one corner
    # convolution is local (receptive field 2 px here): the opposite corner does not move; attention is global
    assert torch.equal(conv(x)[:, :, 7, 7], conv(far)[:, :, 7, 7])
    assert not torch.allclose(attn(x)[:, :, 7, 7], attn(far)[:, :, 7, 7])


def test_expert_ratios_follow_the_direction_and_fall_with_depth():
    ratios = expert_ratios(4, 3, stage_scale=[1.0, 0.8, 0.6])
    assert ratios[0] == pytest.approx([0.75, 0.6, 0.45]) and ratios[3] == pytest.approx([0.25, 0.2, 0.15])
    assert all(r[0] > r[1] > r[2] for r in ratios)
    assert expert_ratios(4, 3, stage_scale=[1.0, 0.8, 0.6], direction="conv_high_t") == ratios[::-1]
    assert expert_ratios(1, 1, base=[1.0], stage_scale=[1.0]) == [[15 / 16]]  # clipped
    net = IUNet(1, 8, (16, 32), ratios[0][:2], head_dim=8)
    mixers = [m for m in net.modules() if isinstance(m, FrequencyMixer)]
    assert {m.ratio for m in mixers} == set(ratios[0][:2])
    assert {(m.channels, m.high_channels) for m in mixers} == {(16, 12), (32, 20)}
    with pytest.raises(ValueError, match="ratio_direction"):
        expert_ratios(4, 2, direction="sideways")
