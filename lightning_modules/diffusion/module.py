"""DiffusionModule: unconditional DDPM training (epsilon prediction) in pixel or latent space.

The module owns the denoiser (`nets.build_unet`), the noise schedule (`schedulers`), an optional frozen VAE
(`latent.FrozenVAE`), AdamW, per-interval losses, sampling (`sampling.sample`), FID (`fid.build_fid`) and the
Inception Score (`inception_score.build_inception_score`).

Contract with timestep multi-task callbacks (e.g. `callbacks.mtl.TimestepMTL`); the module stays MTL-agnostic:

- ``num_train_timesteps`` (int) and ``alphas_cumprod`` (tensor of length T) describe the schedule;
- after each training forward, ``per_sample_loss`` (B,) and ``timesteps`` (B,) hold the batch's per-sample
  losses (mean over pixels of ``(eps - eps_theta)^2``) and their timesteps;
- ``timestep_sampler``: if a callback sets it, training timesteps are ``timestep_sampler(B, device)``
  (stratified sampling); otherwise uniform on 0..T-1;
- ``loss_reducer``: if a callback sets it, under automatic optimization
  ``loss_reducer(module, per_sample_loss, timesteps)`` replaces the plain mean and returns the loss Lightning
  back-propagates. A reducer that needs per-task gradients (gradient surgery) switches the module to manual
  optimization (``automatic_optimization = False``) before fit; the module then calls
  ``loss_reducer.manual_step(module, loss_fn, timesteps) -> (per_sample_loss, loss)``, where
  ``loss_fn(index)`` returns the per-sample losses of the samples ``index`` of the batch (a forward on that
  sub-batch only), and the reducer runs the backward passes and the optimizer step. A reducer that is an
  ``nn.Module`` becomes a submodule (its parameters are synchronized by DDP and saved in checkpoints) and may
  offer ``param_group() -> dict`` for its own optimizer settings (uncertainty weighting's learned
  log-variances).

Sub-batch forwards give each timestep cluster's exact gradient because the U-Net treats samples independently
(GroupNorm, no BatchNorm); a network with batch-coupled layers would need the reducer's ``batched`` mode.

Manual optimization is chosen for gradient surgery because Lightning then leaves the DDP reducer alone: the
callback gets every rank's local per-task gradients and averages them itself before the surgery, which is what
makes 2 processes equal 1 process on the global batch.

Sampling (`generate`, `predict`, the FID of `test`) uses the weights the module holds: with the `callbacks.EMA`
callback, checkpoints hold the EMA weights, so `predict --ckpt_path` samples with EMA weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchvision.utils import save_image

from lightning_modules.common import check_finite_loss
from lightning_modules.diffusion.fid import build_fid
from lightning_modules.diffusion.inception_score import build_inception_score
from lightning_modules.diffusion.latent import FrozenVAE
from lightning_modules.diffusion.nets import build_unet
from lightning_modules.diffusion.sampling import sample, to_uint8
from lightning_modules.diffusion.schedulers import build_sampler, build_train_scheduler
from lightning_modules.metrics import PerDomainMeans


def images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a batch that is ``x``, ``(x, ...)`` or ``{"image": x}``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict) and "image" in batch:
        return batch["image"]
    raise ValueError(
        f"expected a batch of images (tensor, (x, ...) or {{'image': x}}), got {type(batch).__name__}"
    )


EVAL_ARGS = (
    "sampler",
    "sample_steps",
    "eta",
    "timestep_spacing",
    "clip_sample",
    "final_alpha_one",
    "sample_seed",
    "output_dir",
    "shard_size",
    "fid_feature",
    "fid_weights_path",
    "fid_num_samples",
    "fid_batch_size",
    "inception_score",
    "is_splits",
)


class DiffusionModule(L.LightningModule):
    """Unconditional diffusion model (DDPM training, DDIM/DDPM sampling, FID testing).

    Args:
        input_shape: (C, H, W) of the images; linked from the datamodule by the CLI.
        unet_preset, unet: `UNet2DModel` size preset (`tiny`, `adm`, `ldm`, `adm256_uncond`) and overrides.
        learn_sigma: the U-Net also predicts ADM's variance interpolation (2C outputs; used by DDPM sampling).
            Training such a model needs ADM's hybrid loss (L_simple + L_vlb), which is not implemented: fit
            refuses it; predict, test and guided sampling of a converted ADM checkpoint work.
        num_train_timesteps, beta_schedule, beta_start, beta_end: the `DDPMScheduler` (``linear`` or ``cosine``).
        vae_path: a local diffusers `AutoencoderKL` folder for latent diffusion; None for pixel space.
        latent_scaling_factor: latent scale (SD-VAE 0.18215); None reads the VAE config.
        lr, weight_decay, adam_betas: AdamW for the denoiser.
        sampler, sample_steps, eta, timestep_spacing: the sampling scheduler (``ddim`` or ``ddpm``).
        clip_sample: clip the predicted x0 to [-1, 1] at each sampling step (guided-diffusion's default).
        final_alpha_one: the last DDIM step lands on alpha_bar = 1, i.e. returns the predicted x0 (the DDIM paper
            and guided-diffusion); False keeps diffusers' alpha_bar_0 (``set_alpha_to_one=False``).
        sample_seed: base seed; sample ``i`` starts from the noise seeded ``sample_seed * 10**6 + i``.
        output_dir: where `predict` writes PNGs (default ``<log_dir>/samples``).
        shard_size: write sample i as ``<output_dir>/<i // shard_size:04d>/<i:06d>.png`` (folders of
            ``shard_size`` files, for large sets such as PPAP's 500k); None: one flat folder.
        fid_feature, fid_weights_path: FID extractor (``classifier``, ``inception`` or ``none``) and its weights.
        fid_num_samples, fid_batch_size: generated images for FID in `test`, and the sampling batch.
        inception_score, is_splits: also the Inception Score of those samples (``test/is``, ``test/is_std``),
            from the logits of the FID network (Inception-v3, or the ``classifier``: then it is that
            classifier's score, comparable only with itself), averaged over ``is_splits`` chunks (10: standard).
        log_intervals: uniform timestep intervals for the per-interval training/validation losses.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int] = (3, 256, 256),
        unet_preset: str = "tiny",
        unet: dict[str, Any] | None = None,
        learn_sigma: bool = False,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        vae_path: str | None = None,
        latent_scaling_factor: float | None = 0.18215,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        adam_betas: tuple[float, float] = (0.9, 0.999),
        sampler: str = "ddim",
        sample_steps: int = 50,
        eta: float = 0.0,
        timestep_spacing: str = "leading",
        clip_sample: bool = False,
        final_alpha_one: bool = False,
        sample_seed: int = 0,
        output_dir: str | None = None,
        shard_size: int | None = None,
        fid_feature: str = "none",
        fid_weights_path: str | None = None,
        fid_num_samples: int = 1000,
        fid_batch_size: int = 250,
        inception_score: bool = False,
        is_splits: int = 10,
        log_intervals: int = 5,
    ) -> None:
        super().__init__()
        # How to sample and evaluate is not part of the trained model: these are kept out of the checkpoint's
        # hyperparameters, because `cli.py predict/test --ckpt_path` would let the checkpoint's values override
        # the command line (e.g. --model.init_args.sample_steps 100).
        self.save_hyperparameters(ignore=list(EVAL_ARGS))
        self.eval_args = {
            "sampler": sampler,
            "sample_steps": sample_steps,
            "eta": eta,
            "timestep_spacing": timestep_spacing,
            "clip_sample": clip_sample,
            "final_alpha_one": final_alpha_one,
            "sample_seed": sample_seed,
            "output_dir": output_dir,
            "shard_size": shard_size,
            "fid_feature": fid_feature,
            "fid_weights_path": fid_weights_path,
            "fid_num_samples": fid_num_samples,
            "fid_batch_size": fid_batch_size,
            "inception_score": inception_score,
            "is_splits": is_splits,
        }
        channels, height, width = (int(v) for v in input_shape)
        if height != width:
            raise ValueError(f"square images expected, got input_shape {tuple(input_shape)}")
        self.vae = FrozenVAE(vae_path, latent_scaling_factor) if vae_path else None
        if self.vae is not None:
            if height % self.vae.downsample:
                raise ValueError(
                    f"image size {height} is not divisible by the VAE's factor {self.vae.downsample}"
                )
            self.latent_shape = (
                self.vae.latent_channels,
                height // self.vae.downsample,
                width // self.vae.downsample,
            )
        else:
            self.latent_shape = (channels, height, width)
        self.net = build_unet(self.latent_shape[0], self.latent_shape[1], unet_preset, unet, learn_sigma)
        self.scheduler = build_train_scheduler(
            num_train_timesteps, beta_schedule, beta_start, beta_end, learn_sigma
        )
        self.register_buffer(
            "alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False
        )
        self.num_train_timesteps = int(num_train_timesteps)
        if fid_feature not in ("none", "classifier", "inception"):
            raise ValueError(f"fid_feature must be 'none', 'classifier' or 'inception', got {fid_feature!r}")
        if shard_size is not None and shard_size < 1:
            raise ValueError(f"shard_size must be >= 1 or null, got {shard_size}")
        if inception_score and fid_feature == "none":
            raise ValueError(
                "inception_score needs fid_feature 'inception' or 'classifier' (the network it scores with)"
            )
        self.fid = None  # built in setup("test"), so training never needs the FID weights
        self.inception_score = None  # likewise
        # the MTL contract (see the module docstring)
        self.timestep_sampler = None
        self.loss_reducer = None
        self.per_sample_loss: torch.Tensor | None = None
        self.timesteps: torch.Tensor | None = None
        self.interval_bounds = [
            round(i * num_train_timesteps / log_intervals) for i in range(log_intervals + 1)
        ]
        self.val_metric = PerDomainMeans(log_intervals)
        self.test_metric = PerDomainMeans(log_intervals)

    def setup(self, stage: str) -> None:
        ev = self.eval_args
        if stage == "fit" and self.hparams.get("learn_sigma", False):
            raise NotImplementedError(
                "fit with learn_sigma=True is not supported: a learned variance is trained with ADM's hybrid loss "
                "(L_simple + L_vlb, Nichol & Dhariwal 2021), which litlab does not implement. Converted ADM "
                "checkpoints (scripts/convert_adm_checkpoint.py) are for predict, test and guided sampling."
            )
        if stage == "test" and self.fid is None and ev["fid_feature"] != "none":
            self.fid = build_fid(ev["fid_feature"], ev["fid_weights_path"])
        if stage == "test" and self.inception_score is None and ev.get("inception_score"):
            self.inception_score = build_inception_score(
                ev["fid_feature"], ev["fid_weights_path"], splits=ev["is_splits"]
            )

    # ------------------------------------------------------------------ core
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the diffusion space (latents with a VAE, else the images)."""
        return images if self.vae is None else self.vae.encode(images)

    def per_sample_losses(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``mean_pixels (eps - eps_theta(x_t, t))^2`` per sample, with ``x_t = add_noise(z0, eps, t)``."""
        x_t = self.scheduler.add_noise(z0, noise, t)
        eps = self.net(x_t, t).sample
        return (eps.float() - noise.float()).pow(2).flatten(1).mean(dim=1)

    def draw_timesteps(self, n: int) -> torch.Tensor:
        if self.timestep_sampler is not None:
            t = self.timestep_sampler(n, self.device)
            if t.shape != (n,) or t.min() < 0 or t.max() >= self.num_train_timesteps:
                raise ValueError(f"timestep_sampler returned invalid timesteps of shape {tuple(t.shape)}")
            return t.long()
        return torch.randint(0, self.num_train_timesteps, (n,), device=self.device)

    def training_inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z0, t, noise)`` for a training batch: encoded images, drawn timesteps and Gaussian noise."""
        z0 = self.encode(images_of(batch))
        return z0, self.draw_timesteps(z0.shape[0]), torch.randn_like(z0)

    def training_step(self, batch, batch_idx: int):
        z0, t, noise = self.training_inputs(batch)
        if self.automatic_optimization:
            losses = self.per_sample_losses(z0, t, noise)
            self._expose(losses, t)
            loss = losses.mean() if self.loss_reducer is None else self.loss_reducer(self, losses, t)
            self._log_train(loss, losses, t)
            return loss
        # manual optimization: the reducer runs backward and step, evaluating sub-batches through loss_fn
        manual_step = getattr(self.loss_reducer, "manual_step", None)
        if manual_step is None:
            raise RuntimeError("manual optimization is on but the loss_reducer has no manual_step")

        def loss_fn(index: torch.Tensor) -> torch.Tensor:
            losses = self.per_sample_losses(z0[index], t[index], noise[index])
            check_finite_loss(losses, self.global_step)
            return losses

        losses, loss = manual_step(self, loss_fn, t)
        self._expose(losses, t)
        self._log_train(loss, losses, t)
        return None

    def _expose(self, losses: torch.Tensor, t: torch.Tensor) -> None:
        check_finite_loss(losses, self.global_step)
        self.per_sample_loss, self.timesteps = losses, t

    def _log_train(self, loss: torch.Tensor, losses: torch.Tensor, t: torch.Tensor) -> None:
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/mse", losses.detach().mean())
        ids = torch.bucketize(t, torch.as_tensor(self.interval_bounds[1:-1], device=t.device), right=True)
        for i in range(len(self.interval_bounds) - 1):
            mask = ids == i
            if mask.any():
                self.log(f"train/mse_{self._interval_name(i)}", losses.detach()[mask].mean())

    def _interval_name(self, i: int) -> str:
        return f"t{self.interval_bounds[i]:04d}-{self.interval_bounds[i + 1]:04d}"

    # ------------------------------------------------------------------ evaluation
    def _interval_losses(self, batch, batch_idx: int, metric: PerDomainMeans) -> torch.Tensor:
        """Loss of each uniform interval at seeded timesteps and noise (same draws every evaluation)."""
        x0 = images_of(batch)
        z0 = self.encode(x0)
        n = z0.shape[0]
        for i in range(len(self.interval_bounds) - 1):
            g = torch.Generator().manual_seed(10_007 * batch_idx + i)
            t = torch.randint(self.interval_bounds[i], self.interval_bounds[i + 1], (n,), generator=g)
            noise = torch.randn(z0.shape, generator=g)
            losses = self.per_sample_losses(z0, t.to(self.device), noise.to(z0))
            metric.update(losses, torch.zeros_like(losses), torch.full((n,), i, device=self.device))
        return x0

    def _log_intervals(self, metric: PerDomainMeans, stage: str) -> None:
        out = metric.compute()
        metric.reset()
        if not bool(out["present"].any()):
            return
        self.log(f"{stage}/loss", out["loss"][out["present"]].mean().float(), prog_bar=stage == "val")
        for i in out["present"].nonzero().flatten().tolist():
            self.log(f"{stage}/loss_{self._interval_name(i)}", out["loss"][i].float())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._interval_losses(batch, batch_idx, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        self._log_intervals(self.val_metric, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        x0 = self._interval_losses(batch, batch_idx, self.test_metric)
        if self.fid is not None:
            self.fid.update(to_uint8(x0), real=True)

    def on_test_epoch_end(self) -> None:
        self._log_intervals(self.test_metric, "test")
        if self.fid is None:
            return
        rank, world = self.global_rank, self.trainer.world_size if self._trainer is not None else 1
        n, batch = self.eval_args["fid_num_samples"], self.eval_args["fid_batch_size"]
        indices = list(range(rank, n, world))
        for start in range(0, len(indices), batch):
            chunk = indices[start : start + batch]
            images = to_uint8(self.generate(chunk))
            self.fid.update(images, real=False)
            if self.inception_score is not None:
                self.inception_score.update(images)
        self.log("test/fid", self.fid.compute().float(), sync_dist=False)
        self.log("test/fid_num_samples", float(n))
        self.fid.reset()
        if self.inception_score is not None:
            # torchmetrics shuffles before splitting with the global RNG: a fixed seed gives every rank (and every
            # rerun) the same splits
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                mean, std = self.inception_score.compute()
            self.log("test/is", mean.float(), sync_dist=False)
            if self.eval_args["is_splits"] > 1:  # the spread over splits (undefined for one)
                self.log("test/is_std", std.float(), sync_dist=False)
            self.inception_score.reset()

    # ------------------------------------------------------------------ sampling
    def generate(
        self, indices: list[int], num_steps: int | None = None, sampler: str | None = None
    ) -> torch.Tensor:
        """Images in [-1, 1] for the sample indices (sample i's noise is seeded ``sample_seed * 10**6 + i``)."""
        ev = self.eval_args
        scheduler = build_sampler(
            self.scheduler,
            sampler or ev["sampler"],
            ev["timestep_spacing"],
            ev["clip_sample"],
            ev["final_alpha_one"],
        )
        seeds = [ev["sample_seed"] * 1_000_000 + int(i) for i in indices]
        was_training = self.net.training
        self.net.eval()
        try:
            return sample(
                self.net,
                scheduler,
                seeds,
                self.latent_shape,
                num_steps or ev["sample_steps"],
                ev["eta"],
                decode=None if self.vae is None else self.vae.decode,
                device=self.device,
            )
        finally:
            self.net.train(was_training)

    def sample_dir(self) -> Path:
        """Where `predict` writes its PNGs: ``output_dir``, else ``<log_dir>/samples`` (``PendingSamplesDataModule``
        reads the same folder to resume)."""
        if self.eval_args["output_dir"]:
            return Path(self.eval_args["output_dir"])
        return Path(self.trainer.log_dir or self.trainer.default_root_dir) / "samples"

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Generate the samples whose indices are in the batch and write them as ``<output_dir>/<index>.png``."""
        indices = images_of(batch).flatten().tolist()
        images = self.generate(indices)
        out = self.sample_dir()
        out.mkdir(parents=True, exist_ok=True)
        shard = self.eval_args.get("shard_size")
        for i, image in zip(indices, images, strict=True):
            folder = out / f"{i // shard:04d}" if shard else out
            folder.mkdir(exist_ok=True)
            tmp = folder / f".{i:06d}.png.tmp"
            save_image((image + 1) / 2, tmp, format="png")
            tmp.replace(folder / f"{i:06d}.png")  # never a half-written file
        return torch.as_tensor(indices)

    # ------------------------------------------------------------------ optimization and checkpoints
    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": [p for p in self.net.parameters() if p.requires_grad]}]
        extra = getattr(self.loss_reducer, "param_group", None)
        if callable(extra) and (group := extra()) is not None:
            groups.append(group)
        hp = self.hparams
        return torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.adam_betas))

    # frozen parts read from their own files (VAE, FID extractor), not stored in every checkpoint
    _FROZEN_PREFIXES = ("vae.", "fid.", "inception_score.")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key in [k for k in checkpoint["state_dict"] if k.startswith(self._FROZEN_PREFIXES)]:
            del checkpoint["state_dict"][key]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Frozen parts (VAE, FID extractor) keep their own weights: their keys may be absent or extra."""
        state = {k: v for k, v in state_dict.items() if not k.startswith(self._FROZEN_PREFIXES)}
        for name in ("vae", "fid", "inception_score"):
            part = getattr(self, name)
            if part is not None:
                state.update({f"{name}.{k}": v for k, v in part.state_dict().items()})
        return super().load_state_dict(state, strict=strict, assign=assign)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(self._FROZEN_PREFIXES)]:
            del state[key]
        for name in ("vae", "fid", "inception_score"):
            part = getattr(self, name)
            if part is not None:
                state.update({f"{name}.{k}": v for k, v in part.state_dict().items()})
        if not isinstance(self.loss_reducer, nn.Module):  # e.g. predict without the MTL callback
            for key in [k for k in state if k.startswith("loss_reducer.")]:
                del state[key]

    def on_train_start(self) -> None:
        # different noise and timesteps on every rank (seed_everything gives every rank the same seed)
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)
