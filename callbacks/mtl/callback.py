"""TimestepMTL: ANT's interval clustering of timesteps with multi-task learning, as a callback.

Contract with the module (`DiffusionModule` follows it; see its docstring): it has ``num_train_timesteps``,
``alphas_cumprod`` (for SNR clustering) and the settable attributes ``timestep_sampler`` and ``loss_reducer``,
exposes ``per_sample_loss`` / ``timesteps``, and adds ``loss_reducer.param_group()`` to its optimizer when the
reducer offers one. Nothing else about the module is assumed.

In ``setup`` (before the DDP wrap and before the optimizer exists) the callback:
1. splits 0..T-1 into ``num_clusters`` intervals: ``uniform``, or the exact DP (`intervals.cluster_intervals`)
   on the ``timestep``, ``snr`` (log-SNR by default) or ``gradient`` (task-affinity file from
   ``scripts/task_affinity.py``) distance;
2. installs a `StratifiedTimestepSampler` (each interval gets ``B / k`` of each per-process batch);
3. installs the reducer for ``method``: ``stratified`` (plain mean), ``uw`` (uncertainty weighting, automatic
   optimization), ``pcgrad`` or ``nash`` (gradient surgery; switches the module to manual optimization).

Under DDP: UW's log-variances are module parameters, so DDP averages their gradients; PCGrad/Nash all-reduce the
k per-cluster gradients before combining them; random choices (PCGrad's order) and Nash's solve are identical on
every rank. Two processes thus give the update of one process on the global batch (tests/test_mtl_ddp.py).
The boundaries are logged and stored in the callback's checkpoint state.

Inside one expert of a multi-expert model (MEME, one expert per run) the module may also expose
``timestep_range = (low, high)``: the timesteps it trains on. The k intervals then split ``low..high-1`` instead of
``0..T-1`` (same clusterings, on that range; a ``gradient`` affinity file is restricted to the range), so the
tasks are the expert's own sub-intervals and stratified sampling never leaves the expert's interval.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from callbacks.mtl.intervals import (
    affinity_boundaries,
    cluster_intervals,
    distance_matrix,
    uniform_boundaries,
    validate_boundaries,
)
from callbacks.mtl.reducers import MeanReducer, SurgeryReducer, UWReducer
from callbacks.mtl.sampling import StratifiedTimestepSampler

METHODS = ("stratified", "uw", "pcgrad", "nash")
CLUSTERINGS = ("uniform", "timestep", "snr", "gradient")


class TimestepMTL(Callback):
    """ANT (Go et al., NeurIPS 2023): timestep intervals as tasks of a multi-task learner.

    Args:
        method: ``stratified``, ``uw`` (paper default), ``pcgrad`` or ``nash``.
        num_clusters: k (paper: 5).
        clustering: ``uniform``, ``timestep``, ``snr`` or ``gradient``.
        snr_space: ``log`` (default, reconstructed) or ``linear`` SNR distance.
        affinity_path: ``.pt`` file from ``scripts/task_affinity.py`` (``gradient`` clustering).
        boundaries: explicit ``[0, b_1, ..., T]``; overrides ``clustering``.
        stratified: stratified timestep sampling (official code: on).
        uw_lr, uw_weight_decay, uw_divide_by_k: UW's param group (official: 0.025, 0) and L_i / k.
        grad_mode: how PCGrad/Nash get the per-cluster gradients (``subbatch``, ``batched``, ``loop``;
            see `SurgeryReducer`).
        nash_update_every, nash_max_grad_norm: NashMTL (official: 25, 1.0).
        pcgrad_max_grad_norm: optional clipping for PCGrad (default off).
        seed: PCGrad's projection-order seed.
    """

    def __init__(
        self,
        method: str = "uw",
        num_clusters: int = 5,
        clustering: str = "uniform",
        snr_space: str = "log",
        affinity_path: str | None = None,
        boundaries: list[int] | None = None,
        stratified: bool = True,
        uw_lr: float = 0.025,
        uw_weight_decay: float = 0.0,
        uw_divide_by_k: bool = False,
        grad_mode: str = "subbatch",
        nash_update_every: int = 25,
        nash_max_grad_norm: float | None = 1.0,
        pcgrad_max_grad_norm: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if clustering not in CLUSTERINGS:
            raise ValueError(f"clustering must be one of {CLUSTERINGS}, got {clustering!r}")
        if clustering == "gradient" and not affinity_path and boundaries is None:
            raise ValueError("gradient clustering needs affinity_path (made by scripts/task_affinity.py)")
        self.method, self.k, self.clustering, self.snr_space = (
            method,
            int(num_clusters),
            clustering,
            snr_space,
        )
        self.affinity_path, self.fixed_boundaries, self.stratified = affinity_path, boundaries, stratified
        self.uw = {"lr": uw_lr, "weight_decay": uw_weight_decay, "divide_by_k": uw_divide_by_k}
        self.surgery = {"grad_mode": grad_mode, "seed": seed, "nash_update_every": nash_update_every}
        self.max_norm = nash_max_grad_norm if method == "nash" else pcgrad_max_grad_norm
        self.boundaries: list[int] | None = None
        self.reducer = None

    def compute_boundaries(
        self,
        num_timesteps: int,
        alphas_cumprod: torch.Tensor | None = None,
        timestep_range: tuple[int, int] | None = None,
    ) -> list[int]:
        """The k intervals' boundaries ``[low, b_1, ..., high]`` (``[0, ..., T]`` without ``timestep_range``)."""
        low, high = (0, num_timesteps) if timestep_range is None else (int(x) for x in timestep_range)
        if not 0 <= low < high <= num_timesteps:
            raise ValueError(
                f"timestep_range must satisfy 0 <= low < high <= {num_timesteps}, got {timestep_range}"
            )
        n = high - low
        if self.fixed_boundaries is not None:
            try:
                local = validate_boundaries([b - low for b in self.fixed_boundaries], n)
            except ValueError as exc:
                raise ValueError(f"boundaries must run from {low} to {high}: {exc}") from None
        elif self.clustering == "uniform":
            local = uniform_boundaries(n, self.k)
        elif self.clustering == "gradient":
            data = torch.load(self.affinity_path, map_location="cpu", weights_only=True)
            ts = np.asarray(data["timesteps"])
            keep = (ts >= low) & (ts < high)
            if keep.sum() < self.k:
                raise ValueError(
                    f"the affinity file has {int(keep.sum())} timesteps in [{low}, {high}); "
                    f"{self.k} clusters need at least {self.k}"
                )
            affinity = np.asarray(data["affinity"])[np.ix_(keep, keep)]
            local = affinity_boundaries(affinity, ts[keep] - low, n, self.k)
        else:
            if alphas_cumprod is not None:
                alphas_cumprod = torch.as_tensor(alphas_cumprod)[low:high]
            dist_matrix = distance_matrix(self.clustering, n, alphas_cumprod, self.snr_space)
            local = cluster_intervals(dist_matrix, self.k)[0]
        return [low + b for b in local]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.boundaries is None:
            self.boundaries = self.compute_boundaries(
                int(pl_module.num_train_timesteps),
                getattr(pl_module, "alphas_cumprod", None),
                getattr(pl_module, "timestep_range", None),
            )
        if stage != "fit":
            return
        if self.stratified:
            pl_module.timestep_sampler = StratifiedTimestepSampler(self.boundaries)
        if self.method == "stratified":
            self.reducer = MeanReducer(self.boundaries)
        elif self.method == "uw":
            self.reducer = UWReducer(self.boundaries, **self.uw)
        else:
            self.reducer = SurgeryReducer(
                self.boundaries, self.method, max_grad_norm=self.max_norm, **self.surgery
            )
            pl_module.automatic_optimization = False
        pl_module.loss_reducer = self.reducer
        rank_zero_info(f"TimestepMTL: {self.method}, {self.clustering} intervals {self.boundaries}")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_hyperparams({"mtl/boundaries": str(self.boundaries)})

    def state_dict(self) -> dict[str, Any]:
        alpha = getattr(self.reducer, "alpha", None)
        return {"boundaries": self.boundaries, "nash_alpha": None if alpha is None else list(alpha)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.boundaries = state_dict.get("boundaries", self.boundaries)
        self._alpha = state_dict.get("nash_alpha")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        alpha = getattr(self, "_alpha", None)
        if alpha is not None and isinstance(self.reducer, SurgeryReducer):
            self.reducer.alpha = np.asarray(alpha)
