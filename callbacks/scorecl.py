"""ScoreCL as a callback: weight each positive pair's loss by how differently a score network sees its two views.

Reconstruction of ScoreCL (arXiv 2306.04175; no official code): every choice below is an option; defaults follow
our spec (shared/design/methods/scorecl.md, section 2).

Per training step:
1. score values S(v) = ||s(v, sigma*)||_2 over pixels of each un-normalised view (`statistic: mean_abs` and
   `score_sigma: all`, an average over the sigma levels, are options);
2. pair gaps d_i = |S(v1_i) - S(v2_i)| (`reference: original`: the mean of |S(v_k,i) - S(x_i)| over the two views,
   x the clean image);
3. d is gathered from every process, then weights are computed on the global batch: `normalize` mean (d / mean d,
   the default), minmax, softmax (softmax(d / temperature) * N) or none; optional `power` on d, clipping to
   [clip_min, clip_max] and a blend w <- 1 - blend + blend * w; controls `weighting: uniform` (w = 1) and
   `weighting: random` (a random permutation of the score weights, same on every process);
4. the module's loss becomes (1/N) sum_i w_i l_i through its `pair_reducer` (weights detached).

Module contract (no isinstance checks): the module has a settable `pair_reducer` attribute (a callable mapping the
per-pair losses (N,) of this process to a scalar; the default is the mean) that its training step uses, and a
method `raw_views(batch)` returning the un-normalised views (list of (N, C, H, W) tensors in [0, 1], first two =
the positive pair); for `reference: original`, `clean_images(batch)` returns the clean images.

Score network: `stage: pretrain` (default) trains it by denoising score matching at the start of fit on
un-augmented training images from the datamodule's `clean_train_dataloader(batch_size, shuffle, seed)`, then
freezes it; `stage: joint` also trains it alongside (one DSM step per training step on the clean images, else the
first raw view; gradients averaged across processes); `stage: frozen` only loads `pretrained_path`. The weights are
saved in the Lightning checkpoint (and to `save_path` after pretraining), so resuming does not retrain.

Logged: scorecl/w_mean, scorecl/w_std, scorecl/d_mean, scorecl/dsm_loss (joint).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist

from lightning_modules.ssl.score_net import build_score_net, dsm_loss, geometric_sigmas

NORMALIZE = ("mean", "minmax", "softmax", "none")


def pair_weights(
    d: torch.Tensor,
    normalize: str = "mean",
    temperature: float = 1.0,
    power: float = 1.0,
    clip_min: float | None = None,
    clip_max: float | None = None,
    blend: float = 1.0,
    eps: float = 1e-12,
) -> torch.Tensor:
    """Per-pair weights from the (global) pair gaps `d` >= 0; detached float tensor of d's shape."""
    d = d.detach().float().clamp_min(0) ** power
    if normalize == "mean":
        mean = d.mean()
        w = d / mean if mean > eps else torch.ones_like(d)
    elif normalize == "minmax":
        span = d.max() - d.min()
        w = (d - d.min()) / span if span > eps else torch.ones_like(d)
    elif normalize == "softmax":
        w = torch.softmax(d / temperature, dim=0) * d.numel()
    elif normalize == "none":
        w = d
    else:
        raise ValueError(f"unknown normalize {normalize!r}; choose one of {NORMALIZE}")
    if clip_min is not None or clip_max is not None:
        w = w.clamp(min=clip_min, max=clip_max)
    return (1 - blend) + blend * w


class WeightedMean:
    """A pair reducer: (1/N) sum_i w_i l_i with fixed, detached weights."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights.detach()

    def __call__(self, pair_losses: torch.Tensor) -> torch.Tensor:
        if pair_losses.shape != self.weights.shape:
            raise ValueError(f"pair losses {tuple(pair_losses.shape)} vs weights {tuple(self.weights.shape)}")
        return (self.weights.to(pair_losses.dtype) * pair_losses).mean()


class ScoreWeighting(L.Callback):
    """ScoreCL's per-pair weights for any module that follows the contract in the module docstring."""

    def __init__(
        self,
        weighting: str = "score",
        stage: str = "pretrain",
        score_net: str = "cnn",
        net_kwargs: dict | None = None,
        pretrained_path: str | None = None,
        save_path: str | None = None,
        pretrain_steps: int = 1500,
        score_lr: float = 1e-3,
        score_batch_size: int = 128,
        sigma_max: float = 1.0,
        sigma_min: float = 0.01,
        num_sigmas: int = 10,
        sigma_star: float = 0.1,
        score_sigma: str = "star",
        statistic: str = "norm",
        reference: str = "pair",
        normalize: str = "mean",
        temperature: float = 1.0,
        power: float = 1.0,
        clip_min: float | None = None,
        clip_max: float | None = None,
        blend: float = 1.0,
        seed: int = 0,
    ) -> None:
        checks = {
            "weighting": (weighting, ("score", "uniform", "random")),
            "stage": (stage, ("pretrain", "joint", "frozen")),
            "score_sigma": (score_sigma, ("star", "all")),
            "statistic": (statistic, ("norm", "mean_abs")),
            "reference": (reference, ("pair", "original")),
            "normalize": (normalize, NORMALIZE),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"ScoreWeighting {key}={value!r}; choose one of {allowed}")
        if stage == "frozen" and not pretrained_path:
            raise ValueError("stage: frozen needs pretrained_path (a score network saved with save_path)")
        self.weighting, self.stage, self.arch, self.net_kwargs = (
            weighting,
            stage,
            score_net,
            dict(net_kwargs or {}),
        )
        self.pretrained_path, self.save_path = pretrained_path, save_path
        self.pretrain_steps, self.score_lr, self.score_batch_size = pretrain_steps, score_lr, score_batch_size
        self.sigmas = geometric_sigmas(sigma_max, sigma_min, num_sigmas)
        self.sigma_star, self.score_sigma, self.statistic, self.reference = (
            sigma_star,
            score_sigma,
            statistic,
            reference,
        )
        self.weight_options = dict(
            normalize=normalize,
            temperature=temperature,
            power=power,
            clip_min=clip_min,
            clip_max=clip_max,
            blend=blend,
        )
        self.seed = seed
        self.net: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.trained = False
        self._pending_state: dict | None = None
        self._saved_reducer = None
        self.last_weights: torch.Tensor | None = None
        self.last_gaps: torch.Tensor | None = None

    # ----- score network ---------------------------------------------------------------------------------
    def build(self, in_chans: int, image_size: int, device: torch.device | str = "cpu") -> torch.nn.Module:
        """Create the score network (and its optimizer); load pending checkpoint / file weights."""
        torch.manual_seed(self.seed)
        self.net = build_score_net(self.arch, in_chans, image_size, **self.net_kwargs).to(device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=self.score_lr)
        if self._pending_state is not None:
            self.net.load_state_dict(self._pending_state["net"])
            self.trained = bool(self._pending_state["trained"])
            self._pending_state = None
        elif self.pretrained_path:
            path = Path(self.pretrained_path)
            if not path.is_file():
                raise FileNotFoundError(f"ScoreWeighting pretrained_path {path} does not exist")
            self.net.load_state_dict(torch.load(path, map_location=device, weights_only=True))
            self.trained = True
        self.net.requires_grad_(self.stage == "joint")
        self.net.eval()
        return self.net

    def dsm_step(self, x: torch.Tensor, generator: torch.Generator | None = None) -> float:
        """One denoising-score-matching step on images in [0, 1]; gradients averaged across processes."""
        self.net.train().requires_grad_(True)
        loss = dsm_loss(self.net, x, self.sigmas, generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in self.net.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
        self.optimizer.step()
        self.net.eval().requires_grad_(self.stage == "joint")
        return float(loss.detach())

    def pretrain(self, loader, steps: int, device) -> list[float]:
        """`steps` DSM steps cycling over `loader` (batches `(x, y)` or `x`, images in [0, 1])."""
        generator = torch.Generator().manual_seed(self.seed)
        losses: list[float] = []
        while len(losses) < steps:
            for batch in loader:
                x = batch[0] if isinstance(batch, (list, tuple)) else batch
                losses.append(self.dsm_step(x.to(device), generator))
                if len(losses) >= steps:
                    break
        self.trained = True
        return losses

    @torch.no_grad()
    def score_values(self, x: torch.Tensor) -> torch.Tensor:
        """S(x) per image: the norm (or mean |.|) of s(x, sigma*) (or its average over all sigma levels)."""
        sigmas = [self.sigma_star] if self.score_sigma == "star" else self.sigmas.tolist()
        values = []
        for s in sigmas:
            sigma = torch.full((x.shape[0],), float(s), device=x.device, dtype=x.dtype)
            score = self.net(x, sigma).flatten(1).float()
            values.append(score.norm(dim=1) if self.statistic == "norm" else score.abs().mean(dim=1))
        return torch.stack(values).mean(0)

    def pair_gaps(self, views: list[torch.Tensor], clean: torch.Tensor | None) -> torch.Tensor:
        """d per pair of this process (see the module docstring)."""
        n = views[0].shape[0]
        s1, s2 = self.score_values(torch.cat([views[0], views[1]])).split(n)  # one forward for both views
        if self.reference == "pair":
            return (s1 - s2).abs()
        if clean is None:
            raise ValueError("reference: original needs clean images: set the datamodule's clean_view: true")
        s0 = self.score_values(clean)
        return 0.5 * ((s1 - s0).abs() + (s2 - s0).abs())

    # ----- Lightning hooks -------------------------------------------------------------------------------
    @staticmethod
    def _check_contract(pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "pair_reducer") or not callable(getattr(pl_module, "raw_views", None)):
            raise TypeError(
                f"ScoreWeighting needs a module that exposes per-pair losses: {type(pl_module).__name__} has no "
                "settable `pair_reducer` and `raw_views(batch)` (see callbacks/scorecl.py; lightning_modules.ssl "
                "modules follow this contract)."
            )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._check_contract(pl_module)
        shape = getattr(trainer.datamodule, "input_shape", None) or pl_module.hparams.get("input_shape")
        if shape is None:
            raise ValueError("ScoreWeighting needs input_shape from the datamodule or the module's hparams")
        self.build(int(shape[0]), int(shape[-1]), pl_module.device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.net.to(pl_module.device)
        if self.trained or self.weighting == "uniform":
            return
        loader_fn = getattr(trainer.datamodule, "clean_train_dataloader", None)
        if not callable(loader_fn):
            raise TypeError("ScoreWeighting pretraining needs the datamodule's clean_train_dataloader()")
        steps = self.pretrain_steps
        losses = self.pretrain(loader_fn(self.score_batch_size, True, self.seed), steps, pl_module.device)
        # every process trained on the same data with the same seed; rank 0's weights are made authoritative
        state = trainer.strategy.broadcast({k: v.cpu() for k, v in self.net.state_dict().items()}, src=0)
        self.net.load_state_dict(state)
        pl_module.print(
            f"ScoreCL: score network pretrained for {steps} DSM steps, loss {losses[0]:.3f} -> "
            f"{sum(losses[-50:]) / len(losses[-50:]):.3f}"
        )
        if self.save_path and trainer.is_global_zero:
            Path(self.save_path).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(self.save_path) + ".tmp")
            torch.save(self.net.state_dict(), tmp)
            tmp.replace(self.save_path)

    def _gather(self, pl_module: L.LightningModule, d: torch.Tensor) -> tuple[torch.Tensor, int]:
        trainer = getattr(pl_module, "_trainer", None)
        world = trainer.world_size if trainer is not None else 1
        if world <= 1:
            return d, 0
        gathered = pl_module.all_gather(d)
        return gathered.flatten(0, 1), pl_module.global_rank * d.shape[0]

    def weights_for(self, pl_module: L.LightningModule, batch) -> torch.Tensor:
        """This process's detached per-pair weights for `batch` (computed on the gathered global gaps)."""
        views = pl_module.raw_views(batch)
        n = views[0].shape[0]
        if self.weighting == "uniform":
            self.last_gaps = torch.zeros(n, device=views[0].device)
            return torch.ones(n, device=views[0].device)
        clean = pl_module.clean_images(batch) if self.reference == "original" else None
        d = self.pair_gaps(views, clean)
        all_d, offset = self._gather(pl_module, d)
        w = pair_weights(all_d, **self.weight_options)
        if self.weighting == "random":
            trainer = getattr(pl_module, "_trainer", None)
            step = trainer.global_step if trainer is not None else 0
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            w = w[torch.randperm(w.numel(), generator=g).to(w.device)]
        self.last_gaps = all_d
        return w[offset : offset + n].detach()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self.stage == "joint" and self.weighting != "uniform":
            clean = pl_module.clean_images(batch)
            x = clean if clean is not None else pl_module.raw_views(batch)[0]
            pl_module.log("scorecl/dsm_loss", self.dsm_step(x))
        w = self.weights_for(pl_module, batch)
        if not torch.isfinite(w).all():
            raise FloatingPointError(f"ScoreCL weights are not finite at step {trainer.global_step}")
        self.last_weights = w
        self._saved_reducer = pl_module.pair_reducer
        pl_module.pair_reducer = WeightedMean(w)
        pl_module.log("scorecl/w_mean", w.mean())
        pl_module.log("scorecl/w_std", w.std() if w.numel() > 1 else w.new_zeros(()))
        pl_module.log("scorecl/d_mean", self.last_gaps.float().mean())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._saved_reducer is not None:
            pl_module.pair_reducer = self._saved_reducer
            self._saved_reducer = None

    # ----- checkpoint ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self.net is None:
            return {}
        return {
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "trained": self.trained,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        if not state_dict:
            return
        if self.net is None:
            self._pending_state = state_dict
        else:
            self.net.load_state_dict(state_dict["net"])
            self.trained = bool(state_dict["trained"])
