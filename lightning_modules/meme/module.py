"""MEMEModule: N denoising experts, each owning a timestep interval, on the shared diffusion core.

`MEMEModule` subclasses `DiffusionModule` (schedule, VAE, per-interval losses, `generate`, `predict_step`, FID,
checkpoint handling) and only changes what the denoiser is and which timesteps train it:

- ``expert_index = n`` (one expert per run, e.g. a SLURM job array): ``net`` *is* expert ``n``; training draws
  its timesteps with the `TimestepAssignment` (hard or soft), so the core's training step, the `EMA` callback
  (``attribute: net``), gradient clipping and checkpoints are all per expert with no extra code, and the
  `TimestepMTL` callback composes inside the expert (its ``timestep_sampler``/``loss_reducer`` contract is the
  core's; ``timestep_range`` tells it the expert's interval, which its clusters then split; hard assignment only). Validation losses are that expert's on every interval.
- ``expert_index = None``: ``net`` is `RoutedExperts` over all N experts. With N > 1, each training step gives
  every expert its own timestep draw on the same images and sums the experts' mean losses (spec §2.5
  ``train_all``); gradient-norm clipping is per expert (`configure_gradient_clipping`); an EMA over ``net`` is
  the per-expert EMA since EMA is elementwise. With N = 1 it is a plain single-denoiser baseline.
- ``expert_checkpoints = [ckpt_0, ..., ckpt_{N-1}]`` (with ``expert_index = None``) assembles separately
  trained experts for sampling, validation, test/FID and predict: ``net`` of the checkpoint of expert ``n``
  (its EMA weights when trained with the `EMA` callback) becomes ``net.experts[n]``.

Contract kept for code written against `DiffusionModule` (PPAP's guided sampler): ``net(x, t).sample`` is
epsilon, ``scheduler``, ``latent_shape``, ``eval_args`` and ``vae`` are the core's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.models.unets.unet_2d import UNet2DOutput
from torch import nn

from lightning_modules.common import check_finite_loss
from lightning_modules.diffusion.module import EVAL_ARGS, DiffusionModule, images_of
from lightning_modules.diffusion.router import IntervalRouter
from lightning_modules.diffusion.schedulers import build_sampler
from lightning_modules.meme.assignment import TimestepAssignment
from lightning_modules.meme.latent import FrozenVQ
from lightning_modules.meme.nets import build_expert, expert_ratios

# the core builds a U-Net in its constructor; MEME replaces it at once, so keep that one minimal
_PLACEHOLDER_UNET = {"block_out_channels": (8,), "down_block_types": ("DownBlock2D",), "norm_num_groups": 4}
_PLACEHOLDER_UNET["up_block_types"] = ("UpBlock2D",)


class RoutedExperts(nn.Module):
    """``forward(x, t)``: each row goes to ``experts[router.expert_of(t)]``; returns ``.sample`` (epsilon).

    Rows that share an expert are evaluated together (a sampling batch, whose rows share ``t``, is one call).
    """

    def __init__(self, experts: list[nn.Module], router: IntervalRouter) -> None:
        super().__init__()
        if len(experts) != router.num_experts:
            raise ValueError(f"{len(experts)} experts for a router with {router.num_experts} intervals")
        self.experts = nn.ModuleList(experts)
        self.router = router

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> UNet2DOutput:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        t = t.contiguous()  # sampling passes an expanded scalar
        owners = self.router.expert_of(t)
        present = owners.unique().tolist()
        if len(present) == 1:
            return UNet2DOutput(sample=self.experts[present[0]](x, t).sample)
        out = None
        for e in present:
            rows = (owners == e).nonzero().flatten()
            eps = self.experts[e](x[rows], t[rows]).sample
            out = eps.new_zeros(x.shape) if out is None else out
            out[rows] = eps
        return UNet2DOutput(sample=out)


class MEMEModule(DiffusionModule):
    """Multi-architecture multi-expert diffusion (Lee et al., AAAI 2024) on `DiffusionModule`.

    Args:
        num_experts: N (paper: 4).
        boundaries: ``[0, b_1, ..., T]`` of the experts' intervals; None = N uniform intervals.
        expert_index: train only this expert (one run per expert); None = all experts in one module.
        architecture: ``iunet`` (MEME's mixer U-Net) or ``unet`` (the core's diffusers `UNet2DModel`, for the
            baselines).
        expert_net: network arguments shared by all experts (`IUNet` arguments, or ``preset`` + `UNet2DModel`
            overrides).
        expert_overrides: optional per-expert dicts merged over ``expert_net`` (e.g. different widths).
        ratios: explicit high-frequency ratios ``[expert][stage]`` (iU-Net); None derives them from
            ``ratio_base`` (per expert, most conv-heavy first), ``ratio_stage_scale`` (per stage),
            ``ratio_direction`` (``conv_low_t`` or ``conv_high_t``) and ``ratio_clip`` (all reconstructed).
        assignment, p, outside_dist: hard or soft timestep assignment (`TimestepAssignment`).
        expert_checkpoints: one checkpoint per expert (from ``expert_index`` runs) assembled for sampling.
        autoencoder: with ``vae_path``, ``kl`` (the core's `AutoencoderKL`) or ``vq`` (a `VQModel`, LDM's VQ-f4;
            use ``latent_scaling_factor: 1.0`` as LDM does).
        The other arguments are `DiffusionModule`'s.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (3, 256, 256),
        num_experts: int = 4,
        boundaries: list[int] | None = None,
        expert_index: int | None = None,
        architecture: str = "iunet",
        expert_net: dict[str, Any] | None = None,
        expert_overrides: list[dict[str, Any]] | None = None,
        ratios: list[list[float | None]] | None = None,
        ratio_base: list[float] | None = None,
        ratio_stage_scale: list[float] | None = None,
        ratio_direction: str = "conv_low_t",
        ratio_clip: tuple[float, float] = (1 / 16, 15 / 16),
        assignment: str = "hard",
        p: list[float] | None = None,
        outside_dist: str = "uniform_all",
        expert_checkpoints: list[str] | None = None,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        vae_path: str | None = None,
        autoencoder: str = "kl",
        latent_scaling_factor: float | None = 0.18215,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        timestep_spacing: str = "leading",
        sample_seed: int = 0,
        output_dir: str | None = None,
        fid_feature: str = "none",
        fid_weights_path: str | None = None,
        fid_num_samples: int = 1000,
        fid_batch_size: int = 250,
        log_intervals: int = 4,
    ) -> None:
        super().__init__(
            input_shape=input_shape,
            unet_preset="tiny",
            unet=_PLACEHOLDER_UNET,
            num_train_timesteps=num_train_timesteps,
            beta_schedule=beta_schedule,
            beta_start=beta_start,
            beta_end=beta_end,
            vae_path=vae_path if autoencoder == "kl" else None,
            latent_scaling_factor=latent_scaling_factor,
            lr=lr,
            weight_decay=weight_decay,
            adam_betas=adam_betas,
            sampler=sampler,
            sample_steps=sample_steps,
            eta=eta,
            timestep_spacing=timestep_spacing,
            sample_seed=sample_seed,
            output_dir=output_dir,
            fid_feature=fid_feature,
            fid_weights_path=fid_weights_path,
            fid_num_samples=fid_num_samples,
            fid_batch_size=fid_batch_size,
            log_intervals=log_intervals,
        )
        # which checkpoints to assemble is a sampling choice, not part of a trained model; the core's U-Net
        # arguments (saved by its constructor) are not MEME arguments
        self.save_hyperparameters(
            ignore=[*EVAL_ARGS, "expert_checkpoints", "unet", "unet_preset", "learn_sigma"]
        )
        if autoencoder not in ("kl", "vq"):
            raise ValueError(
                f"autoencoder must be 'kl' (AutoencoderKL) or 'vq' (VQModel), got {autoencoder!r}"
            )
        if autoencoder == "vq" and vae_path:
            self._use_vq(vae_path, latent_scaling_factor)
        if boundaries is None:
            self.router = IntervalRouter.uniform(num_train_timesteps, num_experts)
        else:
            self.router = IntervalRouter(boundaries, num_train_timesteps)
            if self.router.num_experts != num_experts:
                raise ValueError(f"{len(boundaries)} boundaries for {num_experts} experts (need N + 1)")
        if expert_index is not None and not 0 <= expert_index < num_experts:
            raise ValueError(f"expert_index must be in [0, {num_experts}), got {expert_index}")
        self.num_experts, self.expert_index = int(num_experts), expert_index
        self.assignment = TimestepAssignment(self.router, assignment, p, outside_dist)
        self.expert_ratios = self._ratios(
            num_experts,
            architecture,
            expert_net,
            ratios,
            ratio_base,
            ratio_stage_scale,
            ratio_direction,
            ratio_clip,
        )
        if expert_overrides is not None and len(expert_overrides) != num_experts:
            raise ValueError(
                f"expert_overrides has {len(expert_overrides)} entries for {num_experts} experts"
            )

        def build(e: int) -> nn.Module:
            args = {**(expert_net or {}), **((expert_overrides or [{}] * num_experts)[e] or {})}
            ratios_e = None if self.expert_ratios is None else self.expert_ratios[e]
            return build_expert(architecture, self.latent_shape[0], self.latent_shape[1], args, ratios_e)

        if expert_index is not None:
            if expert_checkpoints:
                raise ValueError("expert_checkpoints assemble all experts: leave expert_index unset (null)")
            self.net = build(expert_index)
        else:
            self.net = RoutedExperts([build(e) for e in range(num_experts)], self.router)
            if expert_checkpoints:
                load_expert_checkpoints(self, expert_checkpoints)

    def _use_vq(self, path: str, scaling_factor: float | None) -> None:
        """Latents from a frozen `VQModel` (LDM's VQ-f4) instead of the core's `AutoencoderKL`."""
        self.vae = FrozenVQ(path, scaling_factor)
        size = self.hparams.input_shape[1]
        if size % self.vae.downsample:
            raise ValueError(
                f"image size {size} is not divisible by the autoencoder's factor {self.vae.downsample}"
            )
        side = size // self.vae.downsample
        self.latent_shape = (self.vae.latent_channels, side, side)

    @staticmethod
    def _ratios(num_experts, architecture, expert_net, ratios, base, stage_scale, direction, clip):
        if architecture != "iunet":
            return None
        num_stages = len((expert_net or {}).get("block_out_channels", (32, 64)))
        if ratios is not None:
            if len(ratios) != num_experts:
                raise ValueError(f"ratios has {len(ratios)} rows for {num_experts} experts")
            return [list(r) for r in ratios]
        return expert_ratios(
            num_experts,
            num_stages,
            base if base is not None else (0.75, 0.5, 0.375, 0.25),
            stage_scale if stage_scale is not None else (1.0, 0.8, 0.6, 0.5),
            direction,
            clip,
        )

    # ------------------------------------------------------------------ training
    @property
    def timestep_range(self) -> tuple[int, int] | None:
        """The interval one hard-assigned expert trains on (`TimestepMTL` clusters inside it); else None."""
        if self.expert_index is None or self.assignment.mode != "hard":
            return None
        return self.router.interval(self.expert_index)

    def draw_timesteps(self, n: int) -> torch.Tensor:
        """The assignment's draws for the trained expert (single-expert mode); a callback's sampler wins."""
        if self.timestep_sampler is not None:
            if self.expert_index is not None and self.assignment.mode != "hard":
                raise RuntimeError(
                    "a timestep sampler (TimestepMTL) inside one expert needs hard assignment: with soft "
                    "assignment the expert's timestep distribution is the assignment's, not the sampler's"
                )
            return super().draw_timesteps(n)
        return self.assignment.draw(self.expert_index or 0, n, device=self.device)

    def training_step(self, batch, batch_idx: int):
        if self.expert_index is not None or self.num_experts == 1:
            return super().training_step(batch, batch_idx)
        if (
            self.loss_reducer is not None
            or self.timestep_sampler is not None
            or not self.automatic_optimization
        ):
            raise RuntimeError(
                "timestep MTL callbacks compose with one expert per run: set --model.init_args.expert_index"
            )
        z0 = self.encode(images_of(batch))
        losses, timesteps, total = [], [], 0.0
        for e, expert in enumerate(self.net.experts):
            t = self.assignment.draw(e, z0.shape[0], device=self.device)
            noise = torch.randn_like(z0)
            x_t = self.scheduler.add_noise(z0, noise, t)
            loss_e = (expert(x_t, t).sample.float() - noise.float()).pow(2).flatten(1).mean(dim=1)
            check_finite_loss(loss_e, self.global_step)
            total = total + loss_e.mean()
            self._log_expert(e, loss_e, t)
            losses.append(loss_e)
            timesteps.append(t)
        losses_all, t_all = torch.cat(losses), torch.cat(timesteps)
        self._expose(losses_all, t_all)
        self._log_train(total, losses_all, t_all)
        return total

    def _log_expert(self, e: int, losses: torch.Tensor, t: torch.Tensor) -> None:
        """Per-expert loss and the share of its draws inside its own interval (soft assignment's histogram)."""
        low, high = self.router.interval(e)
        self.log(f"train/loss_expert{e}", losses.detach().mean())
        self.log(f"train/own_interval_share_expert{e}", ((t >= low) & (t < high)).float().mean())

    def _log_train(self, loss: torch.Tensor, losses: torch.Tensor, t: torch.Tensor) -> None:
        super()._log_train(loss, losses, t)
        if self.expert_index is not None:
            self._log_expert(self.expert_index, losses, t)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """All experts in one run: clip each expert's gradient norm separately (spec §7), not the global norm."""
        if not gradient_clip_val or not isinstance(self.net, RoutedExperts) or self.num_experts == 1:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        for expert in self.net.experts:
            params = [p for p in expert.parameters() if p.grad is not None]
            if gradient_clip_algorithm in (None, "norm"):
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)

    # ------------------------------------------------------------------ sampling accounting
    def steps_per_expert(self, num_steps: int | None = None, sampler: str | None = None) -> list[int]:
        """How many of the sampler's steps each expert handles (DDIM ``leading`` spacing is not uniform)."""
        ev = self.eval_args
        scheduler = build_sampler(self.scheduler, sampler or ev["sampler"], ev["timestep_spacing"])
        scheduler.set_timesteps(num_steps or ev["sample_steps"])
        owners = self.router.expert_of(scheduler.timesteps.long())
        return torch.bincount(owners, minlength=self.num_experts).tolist()

    @classmethod
    def from_expert_checkpoints(cls, paths: list[str], **overrides: Any) -> MEMEModule:
        """Assemble N single-expert checkpoints; the hyperparameters come from the first one."""
        hp = dict(_read_checkpoint(paths[0])["hyper_parameters"])
        hp.pop("expert_index", None)
        hp.pop("expert_checkpoints", None)
        hp.pop("_instantiator", None)
        return cls(**{**hp, **overrides, "expert_checkpoints": list(paths)})


_MATCHING_HPARAMS = ("num_experts", "boundaries", "num_train_timesteps", "beta_schedule", "architecture")


def _read_checkpoint(path: str) -> dict[str, Any]:
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"expert checkpoint {path!r} not found: train each expert with --model.init_args.expert_index n "
            "and pass the N checkpoints in expert order as --model.init_args.expert_checkpoints"
        )
    # Lightning checkpoints of this repo (hyperparameters are plain Python values); only load files you trust
    return torch.load(path, map_location="cpu", weights_only=False)


def load_expert_checkpoints(module: MEMEModule, paths: list[str]) -> None:
    """Load ``net`` of checkpoint ``n`` (a run with ``expert_index = n``) into ``module.net.experts[n]``."""
    if len(paths) != module.num_experts:
        raise ValueError(f"{len(paths)} expert checkpoints for {module.num_experts} experts")
    for e, path in enumerate(paths):
        ckpt = _read_checkpoint(path)
        hp = ckpt.get("hyper_parameters", {})
        if hp.get("expert_index") != e:
            raise ValueError(f"{path} holds expert {hp.get('expert_index')!r}, expected expert {e}")
        for key in _MATCHING_HPARAMS:
            if key in hp and hp[key] != module.hparams.get(key):
                raise ValueError(
                    f"{path}: {key} = {hp[key]!r}, the assembled module has {module.hparams[key]!r}"
                )
        state = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        try:
            module.net.experts[e].load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path} does not fit expert {e}'s architecture: {err}") from err
