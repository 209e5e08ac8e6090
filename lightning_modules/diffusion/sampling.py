"""The reverse process: noise -> images, seeded per sample so results do not depend on batching or ranks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DDIMScheduler
from torch import nn


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], device: torch.device | str) -> torch.Tensor:
    """One standard-normal tensor of ``shape`` per seed (drawn on CPU, so identical on every device)."""
    out = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(out).to(device)


@torch.no_grad()
def sample(
    net: nn.Module,
    scheduler,
    seeds: Sequence[int],
    shape: tuple[int, ...],
    num_steps: int = 50,
    eta: float = 0.0,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Run ``scheduler`` (DDIM or DDPM) for ``num_steps`` from the seeded noise; return images in [-1, 1].

    ``net(x, t).sample`` predicts epsilon (diffusers `UNet2DModel` convention); a learned-variance network's
    ``.variance_values`` go to a DDPM scheduler (`step_input`). Stochastic steps (DDPM, or DDIM with eta > 0) draw
    from a generator seeded with the first seed, so a call is deterministic.
    """
    x = initial_noise(seeds, shape, device) * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_steps, device=device)
    generator = torch.Generator(device=device).manual_seed(int(seeds[0]) + 1_000_003)
    extra = ddim_options(scheduler, eta)
    for t in scheduler.timesteps:
        out = net(scheduler.scale_model_input(x, t), t.expand(x.shape[0]))
        x = scheduler.step(
            step_input(out.sample, out, scheduler), t, x, generator=generator, **extra
        ).prev_sample
    if decode is not None:
        x = decode(x)
    return x.clamp(-1.0, 1.0)


def ddim_options(scheduler, eta: float) -> dict:
    """``step`` options of a DDIM scheduler: eta, and with ``clip_sample`` epsilon re-derived from the clipped x0
    (guided-diffusion's DDIM); nothing for other schedulers."""
    if not isinstance(scheduler, DDIMScheduler):
        return {}
    return {"eta": eta, "use_clipped_model_output": bool(scheduler.config.clip_sample)}


def learned_variance(scheduler) -> bool:
    """Whether ``scheduler`` reads a learned variance from the model output (DDPM ``learned``/``learned_range``)."""
    return getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")


def step_input(eps: torch.Tensor, out, scheduler) -> torch.Tensor:
    """What ``scheduler.step`` takes: ``eps``, with the network's variance channels appended for a scheduler with
    a learned variance (ADM's ``learn_sigma`` models sampled with DDPM)."""
    variance = getattr(out, "variance_values", None)
    if learned_variance(scheduler):
        if variance is None:
            raise ValueError("the scheduler expects a learned variance but the network predicts epsilon only")
        return torch.cat([eps, variance], dim=1)
    return eps


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255], rounding as PNG writers do."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
