"""Loss reducers that a `TimestepMTL` callback installs on a module (see `DiffusionModule`'s contract).

A reducer is called as ``reducer(module, per_sample_loss, timesteps)``. The per-cluster losses ``L_i`` are the
means over the samples whose timestep lies in interval i.

- `MeanReducer` (automatic optimization): ``mean_i L_i`` (stratified sampling with a plain mean).
- `UWReducer` (automatic optimization): uncertainty weighting; its log-variances are module parameters (DDP
  averages their gradients like any other) in their own AdamW group.
- `SurgeryReducer` (manual optimization): PCGrad or NashMTL. Per-cluster gradients are computed locally with
  `torch.autograd.grad` (Lightning's DDP reducer is idle under manual optimization), averaged across ranks with
  one all-reduce, combined, written to ``.grad``, and the optimizer steps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from callbacks.mtl.methods import UncertaintyWeighting, assign_flat_grad, nash_weights, pcgrad, per_task_grads
from callbacks.mtl.sampling import cluster_ids, cluster_means


class MeanReducer(nn.Module):
    """The mean of the per-cluster mean losses."""

    def __init__(self, boundaries: list[int]) -> None:
        super().__init__()
        self.boundaries = list(boundaries)
        self.k = len(boundaries) - 1

    def cluster_losses(self, losses: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        means, counts = cluster_means(losses, cluster_ids(timesteps, self.boundaries), self.k)
        if bool((counts == 0).any()):
            raise ValueError(
                f"a timestep cluster has no sample in this batch (counts {counts.tolist()}); "
                "use stratified sampling (TimestepMTL(stratified=True))"
            )
        return means

    def forward(self, module, losses: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.cluster_losses(losses, timesteps).mean()


class UWReducer(MeanReducer):
    """Uncertainty weighting: ``sum_i 1/2 (exp(-s_i) L_i + s_i)``, ``s`` in its own param group."""

    def __init__(
        self, boundaries: list[int], lr: float = 0.025, weight_decay: float = 0.0, divide_by_k: bool = False
    ) -> None:
        super().__init__(boundaries)
        self.uw = UncertaintyWeighting(self.k, divide_by_k)
        self.lr, self.weight_decay = lr, weight_decay

    def param_group(self) -> dict:
        return {"params": [self.uw.log_vars], "lr": self.lr, "weight_decay": self.weight_decay}

    def forward(self, module, losses: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        cluster = self.cluster_losses(losses, timesteps)
        for i, s in enumerate(self.uw.log_vars.detach().tolist()):
            module.log(f"mtl/uw_log_var_{i}", s)
        return self.uw(cluster)


class SurgeryReducer(MeanReducer):
    """PCGrad or NashMTL over the per-cluster gradients; performs backward and step (manual optimization).

    Args:
        method: ``pcgrad`` or ``nash``.
        grad_mode: how the k per-cluster gradients are computed:
            ``subbatch`` (default): one forward and backward per cluster on that cluster's samples only, so the
            k passes together cost about one full-batch pass (exact when the network treats samples
            independently: GroupNorm/LayerNorm, no BatchNorm; dropout masks are redrawn);
            ``batched``: one full-batch forward and one vectorized backward (``is_grads_batched``);
            ``loop``: one full-batch forward and k backward passes with ``retain_graph``.
        seed: PCGrad's random projection order is drawn from ``seed`` and the step, identically on every rank.
        nash_update_every: NashMTL re-solves its weights every this many steps (official: 25); in between it
            back-propagates the alpha-weighted loss once, so its cost is amortized (``weighted_grad``).
        max_grad_norm: gradient-norm clipping of the combined gradient (NashMTL official: 1.0; None = off).
    """

    def __init__(
        self,
        boundaries: list[int],
        method: str = "pcgrad",
        grad_mode: str = "subbatch",
        seed: int = 0,
        nash_update_every: int = 25,
        max_grad_norm: float | None = None,
    ) -> None:
        super().__init__(boundaries)
        if method not in ("pcgrad", "nash"):
            raise ValueError(f"method must be 'pcgrad' or 'nash', got {method!r}")
        if grad_mode not in ("subbatch", "batched", "loop"):
            raise ValueError(f"grad_mode must be 'subbatch', 'batched' or 'loop', got {grad_mode!r}")
        self.method, self.grad_mode, self.seed = method, grad_mode, seed
        self.nash_update_every, self.max_grad_norm = nash_update_every, max_grad_norm
        self.alpha: np.ndarray | None = None

    def combine(self, grads: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient written to ``.grad`` from the all-reduced (k, P) task gradients, and the task weights."""
        if self.method == "pcgrad":
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            return pcgrad(grads, g), torch.ones(self.k, dtype=grads.dtype)
        if self.alpha is None or step % self.nash_update_every == 0:
            self.alpha = nash_weights(grads @ grads.T, init=self.alpha)
        alpha = torch.as_tensor(self.alpha, dtype=grads.dtype, device=grads.device)
        return (alpha[:, None] * grads).sum(0) / self.k, alpha

    def cluster_grads(self, loss_fn, timesteps: torch.Tensor, params: list[torch.Tensor]):
        """``(grads (k, P), per_sample_loss (B,), cluster losses (k,))`` on this rank's batch."""
        ids = cluster_ids(timesteps, self.boundaries)
        if self.grad_mode != "subbatch":
            losses = loss_fn(torch.arange(len(timesteps), device=timesteps.device))
            cluster = self.cluster_losses(losses, timesteps)
            return (
                per_task_grads(cluster, params, batched=self.grad_mode == "batched"),
                losses.detach(),
                cluster,
            )
        losses = torch.empty(len(timesteps), device=timesteps.device)
        cluster, rows = [], []
        for i in range(self.k):
            index = (ids == i).nonzero().flatten()
            if index.numel() == 0:
                raise ValueError(f"timestep cluster {i} has no sample in this batch; use stratified sampling")
            part = loss_fn(index)
            mean = part.mean()
            grads = torch.autograd.grad(mean, params, allow_unused=True)
            rows.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, params, strict=True)
                    ]
                )
            )
            losses[index] = part.detach().to(losses.dtype)
            cluster.append(mean.detach())
        return torch.stack(rows), losses, torch.stack(cluster)

    def reuses_nash_weights(self, step: int) -> bool:
        """True on NashMTL's steps between re-solves: the weights are known, no per-cluster gradient is needed."""
        return self.method == "nash" and self.alpha is not None and step % self.nash_update_every != 0

    def weighted_grad(self, loss_fn, timesteps: torch.Tensor, params: list[torch.Tensor]):
        """NashMTL between re-solves: one backward of ``sum_i alpha_i L_i / k`` (as the official code does).

        Equal to combining the k per-cluster gradients with the same alpha, at the cost of one pass.
        Returns ``(flat gradient (P,), per_sample_loss (B,), cluster losses (k,))``.
        """
        losses = loss_fn(torch.arange(len(timesteps), device=timesteps.device))
        cluster = self.cluster_losses(losses, timesteps)
        alpha = torch.as_tensor(self.alpha, dtype=cluster.dtype, device=cluster.device)
        grads = torch.autograd.grad((alpha * cluster).sum() / self.k, params, allow_unused=True)
        flat = torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1)
                for g, p in zip(grads, params, strict=True)
            ]
        )
        return flat, losses.detach(), cluster.detach()

    def manual_step(self, module, loss_fn, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        optimizer = module.optimizers()
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.reuses_nash_weights(module.global_step):
            combined, losses, cluster = self.weighted_grad(loss_fn, timesteps, params)
            weights = torch.as_tensor(self.alpha, dtype=combined.dtype)
            if distributed:  # each rank's loss is its local mean: average to the global batch's gradient
                dist.all_reduce(combined)
                combined /= dist.get_world_size()
        else:
            grads, losses, cluster = self.cluster_grads(loss_fn, timesteps, params)
            if distributed:
                dist.all_reduce(
                    grads
                )  # sum over ranks, then mean: the per-cluster gradients of the global batch
                grads /= dist.get_world_size()
            combined, weights = self.combine(grads, module.global_step)
        assign_flat_grad(params, combined)
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.method == "nash":
            for i, w in enumerate(weights.tolist()):
                module.log(f"mtl/nash_alpha_{i}", w)
        return losses, (weights.to(cluster) * cluster.detach()).sum() / self.k

    def forward(self, module, losses: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(
            "SurgeryReducer needs manual optimization (the TimestepMTL callback switches it on)"
        )
