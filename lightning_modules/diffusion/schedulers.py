"""Noise schedules and samplers (diffusers).

Training uses `DDPMScheduler` (epsilon prediction, T = 1000 by default). Sampling uses a scheduler built from the
same config, so the betas are identical: `DDIMScheduler` (eta = 0 deterministic by default) or `DDPMScheduler`
(ancestral). Timestep indices are 0..T-1.

A model with a learned variance (ADM's ``learn_sigma``) gets ``variance_type="learned_range"``: its DDPM sampler
then reads the variance channels (``Sigma = exp(frac log beta_t + (1 - frac) log beta~_t)``, frac = (v + 1) / 2,
with the respaced betas), while DDIM ignores them. ``clip_sample`` clips the predicted x0 to [-1, 1] at each
step, as guided-diffusion's samplers do by default (``clip_denoised=True``); ``final_alpha_one`` makes DDIM's last
step land on alpha_bar = 1 (guided-diffusion, the DDIM paper) rather than alpha_bar_0 (diffusers' default here).
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler

BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "squaredcos_cap_v2": "squaredcos_cap_v2"}


def build_train_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    learn_sigma: bool = False,
) -> DDPMScheduler:
    """`DDPMScheduler` with ``linear`` (beta_start..beta_end) or ``cosine`` (Nichol & Dhariwal) betas."""
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule must be one of {sorted(BETA_SCHEDULES)}, got {beta_schedule!r}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=BETA_SCHEDULES[beta_schedule],
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type="epsilon",
        clip_sample=False,
        variance_type="learned_range" if learn_sigma else "fixed_small",
    )


def build_sampler(
    train_scheduler: DDPMScheduler,
    kind: str = "ddim",
    timestep_spacing: str = "leading",
    clip_sample: bool = False,
    final_alpha_one: bool = False,
):
    """A sampling scheduler with the training betas: ``ddim`` or ``ddpm``."""
    # the settings go in as keyword arguments: diffusers' from_config drops config entries listed in the config's
    # `_use_default_values` (arguments the training scheduler was built without, such as timestep_spacing)
    settings = {"timestep_spacing": timestep_spacing, "clip_sample": bool(clip_sample)}
    if kind == "ddim":
        config = {k: v for k, v in train_scheduler.config.items() if k != "variance_type"}  # DDIM has none
        return DDIMScheduler.from_config(config, set_alpha_to_one=bool(final_alpha_one), **settings)
    if kind == "ddpm":
        return DDPMScheduler.from_config(train_scheduler.config, **settings)
    raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {kind!r}")
