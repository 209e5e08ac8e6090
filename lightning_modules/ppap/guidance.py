"""Classifier guidance with noise-range experts, for any diffusion module of ours.

Contract (what `guided_sample` reads from the diffusion module; `DiffusionModule` and MEME's module provide it):

- ``net(x, t)`` returns an object whose ``.sample`` is the predicted noise epsilon (diffusers `UNet2DModel`);
- ``scheduler``: the training `DDPMScheduler` (its config builds the sampling scheduler, so betas match);
- ``latent_shape``: ``(C, H, W)`` of the diffusion space; ``vae``: None for pixel-space models (guidance needs the
  classifier to see the diffusion space, so latent models are refused with a clear error);
- ``eval_args``: ``sampler``, ``sample_steps``, ``eta``, ``timestep_spacing``, ``sample_seed`` defaults.

At each step the guide is evaluated at the step's original training timestep ``t`` (0..T-1, also when sampling
with fewer, respaced steps), and `NoiseRangeGuide` sends ``x_t`` to the expert that owns ``t`` through the shared
half-open `IntervalRouter` (the same intervals the experts were trained on). With ``g = s * grad_x log p(y | x_t)``:

- DDIM (score correction, Dhariwal & Nichol Alg. 2): ``eps <- eps - sqrt(1 - alpha_bar_t) * g``, then the
  scheduler recomputes ``x0`` and takes its usual step; with ``clip_sample`` the order is guided-diffusion's
  (x0 clipped before the correction, not after);
- DDPM (mean shift, Alg. 1): ``mu <- mu + Sigma_t * g``, with the scheduler's posterior variance ``Sigma_t``
  (the model's learned variance for ADM's ``learn_sigma`` models).

``s = 0`` reproduces `sampling.sample` exactly (same noise, same generator).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from lightning_modules.diffusion.router import IntervalRouter
from lightning_modules.diffusion.sampling import ddim_options, initial_noise, learned_variance, step_input
from lightning_modules.diffusion.schedulers import build_sampler


class NoiseRangeGuide(nn.Module):
    """Guidance experts over half-open timestep intervals: ``forward(x, t)`` = logits of the owning expert.

    Args:
        experts: one classifier (images in [-1, 1] -> logits) per interval; one expert = a single guide for all t.
        router: the `IntervalRouter` the experts were trained with.
    """

    def __init__(self, experts: Sequence[nn.Module], router: IntervalRouter) -> None:
        super().__init__()
        if len(experts) != router.num_experts:
            raise ValueError(f"{len(experts)} experts for a router with {router.num_experts} intervals")
        self.experts = nn.ModuleList(experts)
        self.router = router

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        t = torch.as_tensor(t).cpu()
        owners = self.router.expert_of(t.reshape(1).repeat(x.shape[0]) if t.dim() == 0 else t.contiguous())
        if bool((owners == owners[0]).all()):  # one timestep per sampling step: one expert, one forward
            return self.experts[int(owners[0])](x)
        out = None
        for e in owners.unique().tolist():
            mask = (owners == e).to(x.device)
            logits = self.experts[e](x[mask])
            out = logits.new_zeros(x.shape[0], logits.shape[1]) if out is None else out
            out[mask] = logits
        return out


def log_prob_gradient(
    guide: nn.Module, x: torch.Tensor, t: torch.Tensor | int, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x log softmax(guide(x, t))[y], log p(y | x))`` per sample, on a detached copy of ``x``.

    The guide must treat samples independently (eval mode: BatchNorm uses running statistics), so the gradient
    of the batch sum is each sample's own gradient.
    """
    with torch.enable_grad():
        x_in = x.detach().float().requires_grad_(True)
        log_probs = guide(x_in, t).float().log_softmax(dim=1)
        selected = log_probs.gather(1, labels.view(-1, 1).to(log_probs.device)).squeeze(1)
        (grad,) = torch.autograd.grad(selected.sum(), x_in)
    return grad.to(x.dtype), selected.detach()


def without_clipping(scheduler: DDIMScheduler) -> DDIMScheduler:
    """The same DDIM sampler (betas, spacing, steps) with ``clip_sample`` off; built once per scheduler."""
    twin = getattr(scheduler, "_unclipped_twin", None)
    if twin is None or twin.num_inference_steps != scheduler.num_inference_steps:
        twin = DDIMScheduler.from_config(scheduler.config, clip_sample=False)
        twin.set_timesteps(scheduler.num_inference_steps, device=scheduler.timesteps.device)
        scheduler._unclipped_twin = twin
    return twin


def guided_step(
    scheduler,
    eps: torch.Tensor,
    t: torch.Tensor,
    x: torch.Tensor,
    grad: torch.Tensor | None,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    out=None,
) -> torch.Tensor:
    """One reverse step from ``x`` at timestep ``t`` with the scaled guidance gradient ``grad`` (None: unguided).

    DDIM: score correction of ``eps``; DDPM: mean shift by the posterior variance times ``grad``. ``out``: the
    network's output, whose ``variance_values`` a learned-variance DDPM scheduler reads.
    """
    if isinstance(scheduler, DDIMScheduler):
        if grad is None:
            return scheduler.step(eps, t, x, generator=generator, **ddim_options(scheduler, eta)).prev_sample
        alpha_bar = scheduler.alphas_cumprod.to(x.device)[int(t)]
        if scheduler.config.clip_sample:
            # guided-diffusion's condition_score: clip x0 first, guide the epsilon the clipped x0 implies, and take
            # the DDIM step from that epsilon without clipping again
            bound = scheduler.config.clip_sample_range
            x0 = ((x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).clamp(-bound, bound)
            eps = (x - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
            scheduler = without_clipping(scheduler)
        eps = eps - (1 - alpha_bar).sqrt() * grad
        return scheduler.step(eps, t, x, generator=generator, **ddim_options(scheduler, eta)).prev_sample
    if isinstance(scheduler, DDPMScheduler):
        prev = scheduler.step(step_input(eps, out, scheduler), t, x, generator=generator).prev_sample
        if grad is not None:
            # the variance Sigma_t the scheduler used for this (possibly respaced) step
            if learned_variance(scheduler):  # learned_range: the scheduler returns log Sigma_t
                variance = scheduler._get_variance(int(t), predicted_variance=out.variance_values).exp()
            else:
                variance = scheduler._get_variance(int(t))
            prev = prev + variance.to(x) * grad
        return prev
    raise TypeError(f"guided sampling supports DDIM and DDPM schedulers, got {type(scheduler).__name__}")


@torch.no_grad()
def guided_sample(
    diffusion: nn.Module,
    guide: nn.Module | None,
    labels: torch.Tensor,
    seeds: Sequence[int],
    scale: float = 7.5,
    num_steps: int | None = None,
    sampler: str | None = None,
    eta: float | None = None,
) -> torch.Tensor:
    """Class-guided samples in [-1, 1]: sample ``i`` starts from the noise seeded ``seeds[i]`` and is guided
    towards ``labels[i]`` by ``guide(x, t)`` (e.g. a `NoiseRangeGuide`) with scale ``scale``.

    ``num_steps``, ``sampler`` (``ddim`` / ``ddpm``) and ``eta`` default to ``diffusion.eval_args``.
    """
    if getattr(diffusion, "vae", None) is not None:
        raise ValueError(
            "PPAP guidance needs a pixel-space diffusion model (the guide sees x_t); this one has a VAE"
        )
    ev = diffusion.eval_args
    device = next(diffusion.net.parameters()).device
    scheduler = build_sampler(
        diffusion.scheduler,
        sampler or ev["sampler"],
        ev.get("timestep_spacing", "leading"),
        ev.get("clip_sample", False),
        ev.get("final_alpha_one", False),
    )
    eta = ev.get("eta", 0.0) if eta is None else eta
    labels = torch.as_tensor(labels, device=device).long()
    if labels.shape != (len(seeds),):
        raise ValueError(f"one label per seed expected, got {tuple(labels.shape)} for {len(seeds)} seeds")
    net_was_training = diffusion.net.training
    guide_was_training = guide.training if guide is not None else False
    diffusion.net.eval()
    if guide is not None:
        guide.eval()
    try:
        x = initial_noise(seeds, tuple(diffusion.latent_shape), device) * scheduler.init_noise_sigma
        scheduler.set_timesteps(num_steps or ev["sample_steps"], device=device)
        generator = torch.Generator(device=device).manual_seed(int(seeds[0]) + 1_000_003)
        for t in scheduler.timesteps:
            out = diffusion.net(scheduler.scale_model_input(x, t), t.expand(x.shape[0]))
            eps = out.sample
            grad = None
            if guide is not None and scale != 0:
                grad, _ = log_prob_gradient(guide, x, t, labels)
                grad = scale * grad
            x = guided_step(scheduler, eps, t, x, grad, generator, eta, out)
        return x.clamp(-1.0, 1.0)
    finally:
        diffusion.net.train(net_was_training)
        if guide is not None:
            guide.train(guide_was_training)
