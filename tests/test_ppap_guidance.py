"""PPAP's guided sampler: the guidance step raises log p(y | x), routing by original timestep, the contract."""

from types import SimpleNamespace

import torch
from torch import nn

from lightning_modules.diffusion.module import DiffusionModule
from lightning_modules.diffusion.router import IntervalRouter
from lightning_modules.diffusion.sampling import sample
from lightning_modules.diffusion.schedulers import build_sampler, build_train_scheduler
from lightning_modules.ppap.guidance import NoiseRangeGuide, guided_sample, guided_step, log_prob_gradient


class Eps:
    """Stands for a diffusers output: ``.sample`` is epsilon."""

    def __init__(self, sample):
        self.sample = sample


class ToyDenoiser(nn.Module):
    """eps(x, t) = 0.3 x: a fixed, deterministic stand-in for a trained U-Net."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        return Eps(0.3 * x + self.dummy)


def toy_diffusion():
    """Any object with the contract's attributes (what MEME's module will expose too)."""
    return SimpleNamespace(
        net=ToyDenoiser(),
        scheduler=build_train_scheduler(1000),
        latent_shape=(1, 4, 4),
        vae=None,
        eval_args={"sampler": "ddim", "sample_steps": 10, "eta": 0.0, "timestep_spacing": "leading"},
    )


def tiny_guide(num_classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, num_classes))


class Recorder(nn.Module):
    """An expert that records the timesteps it is asked about."""

    def __init__(self, index: int, log: list) -> None:
        super().__init__()
        self.index, self.log, self.net = index, log, tiny_guide(seed=index)

    def forward(self, x):
        self.log.append(self.index)
        return self.net(x)


def test_guidance_step_raises_target_log_prob():
    """DDIM score correction and DDPM mean shift move x_{t-1} towards the target class of the guiding expert."""
    diffusion = toy_diffusion()
    router = IntervalRouter.uniform(1000, 5)
    guide = NoiseRangeGuide([tiny_guide(seed=i) for i in range(5)], router)
    x = torch.randn(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    for kind in ("ddim", "ddpm"):
        scheduler = build_sampler(diffusion.scheduler, kind)
        scheduler.set_timesteps(100)
        t = scheduler.timesteps[50]  # 490: expert 2
        eps = diffusion.net(x, t).sample
        grad, _ = log_prob_gradient(guide, x, t, y)
        plain = guided_step(scheduler, eps, t, x, None, torch.Generator().manual_seed(1))
        guided = guided_step(scheduler, eps, t, x, 0.5 * grad, torch.Generator().manual_seed(1))
        assert not torch.equal(plain, guided)
        _, lp_plain = log_prob_gradient(guide, plain, t, y)
        _, lp_guided = log_prob_gradient(guide, guided, t, y)
        assert bool((lp_guided > lp_plain).all()), (kind, lp_plain, lp_guided)


def test_each_step_uses_the_expert_owning_its_original_timestep():
    calls: list[int] = []
    router = IntervalRouter.uniform(1000, 5)
    guide = NoiseRangeGuide([Recorder(i, calls) for i in range(5)], router)
    diffusion = toy_diffusion()
    diffusion.eval_args["sample_steps"] = 25  # DDIM-25 ("leading"): 960, 920, ..., 200, 160, ..., 0
    guided_sample(diffusion, guide, torch.zeros(2, dtype=torch.long), [0, 1], scale=1.0)
    scheduler = build_sampler(diffusion.scheduler, "ddim")
    scheduler.set_timesteps(25)
    timesteps = scheduler.timesteps.tolist()
    assert {200, 400, 600, 800} <= set(timesteps)  # the boundaries are visited
    expected = [
        next(e for e in range(5) if router.interval(e)[0] <= t < router.interval(e)[1]) for t in timesteps
    ]
    assert calls == expected
    assert calls[timesteps.index(200)] == 1 and calls[timesteps.index(800)] == 4  # half-open, not inclusive


def test_scale_zero_is_the_unguided_sampler_and_guidance_changes_samples():
    """With the real DiffusionModule: s = 0 reproduces `sampling.sample` exactly, s > 0 differs."""
    torch.manual_seed(0)
    diffusion = DiffusionModule(input_shape=(1, 8, 8), unet_preset="tiny", sample_steps=3).eval()
    seeds, y = [5, 6], torch.tensor([1, 2])
    guide = NoiseRangeGuide([nn.Sequential(nn.Flatten(), nn.Linear(64, 3))], IntervalRouter.uniform(1000, 1))
    for kind in ("ddim", "ddpm"):
        reference = sample(diffusion.net, build_sampler(diffusion.scheduler, kind), seeds, (1, 8, 8), 3)
        unguided = guided_sample(diffusion, guide, y, seeds, scale=0.0, sampler=kind)
        torch.testing.assert_close(unguided, reference, rtol=0, atol=0)
        guided = guided_sample(diffusion, guide, y, seeds, scale=50.0, sampler=kind)
        assert not torch.allclose(guided, reference)


def test_latent_models_are_refused():
    diffusion = toy_diffusion()
    diffusion.vae = object()
    try:
        guided_sample(diffusion, tiny_guide(), torch.zeros(1, dtype=torch.long), [0])
    except ValueError as e:
        assert "pixel-space" in str(e)
    else:
        raise AssertionError("a latent diffusion model was accepted")


def test_ppap_guides_a_meme_sampler():
    """MEME's module keeps the core's contract: scale 0 is MEME's own sampler, guidance changes its samples."""
    from lightning_modules.meme.module import MEMEModule, RoutedExperts

    torch.manual_seed(0)
    meme = MEMEModule(
        input_shape=(1, 8, 8),
        expert_net={"block_out_channels": [8, 16], "head_dim": 4, "norm_num_groups": 4},
        ratio_stage_scale=[1.0, 0.8],
        sample_steps=4,
    ).eval()
    assert isinstance(meme.net, RoutedExperts)  # four experts, routed per step
    guide = NoiseRangeGuide(
        [nn.Sequential(nn.Flatten(), nn.Linear(64, 3)) for _ in range(5)], IntervalRouter.uniform(1000, 5)
    )
    indices, y = [0, 1], torch.tensor([1, 2])
    seeds = [meme.eval_args["sample_seed"] * 1_000_000 + i for i in indices]
    reference = meme.generate(indices)
    unguided = guided_sample(meme, guide, y, seeds, scale=0.0)
    torch.testing.assert_close(unguided, reference, rtol=0, atol=0)
    assert not torch.allclose(guided_sample(meme, guide, y, seeds, scale=50.0), reference)
