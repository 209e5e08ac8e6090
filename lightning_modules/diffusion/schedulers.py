"""Noise schedules and samplers (diffusers).

Training uses `DDPMScheduler` (epsilon prediction, T = 1000 by default). Sampling uses a scheduler built from the
same config, so the betas are identical: `DDIMScheduler` (eta = 0 deterministic by default) or `DDPMScheduler`
(ancestral). Timestep indices are 0..T-1.
"""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler

BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "squaredcos_cap_v2": "squaredcos_cap_v2"}


def build_train_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
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
    )


def build_sampler(train_scheduler: DDPMScheduler, kind: str = "ddim", timestep_spacing: str = "leading"):
    """A sampling scheduler with the training betas: ``ddim`` or ``ddpm``."""
    config = {**train_scheduler.config, "timestep_spacing": timestep_spacing}
    if kind == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    if kind == "ddpm":
        return DDPMScheduler.from_config(config)
    raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {kind!r}")
