"""Keep, in memory, the live weights that scored best on a validation metric.

This gives DomainBed's "training-domain validation" model selection (the ERM "iid" row of the SWAD paper)
without writing a checkpoint per evaluation. Contract: the module logs `monitor` during validation (synced across
ranks, so every rank keeps the same weights). Works with any LightningModule.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn


class BestValidationWeights(Callback):
    """Track the best live weights by `monitor`; offer them as the `name` variant after fit."""

    def __init__(
        self, monitor: str = "val/acc", mode: Literal["max", "min"] = "max", name: str = "iid"
    ) -> None:
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.mode, self.name = monitor, mode, name
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def _better(self, score: float) -> bool:
        if self.best_score is None:
            return True
        return score > self.best_score if self.mode == "max" else score < self.best_score

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(f"BestValidationWeights needs {self.monitor!r} logged during validation")
        score = float(trainer.callback_metrics[self.monitor])
        if self._better(score):
            self.best_score, self.best_step = score, trainer.global_step
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}

    def weight_variants(self, pl_module: L.LightningModule) -> dict[str, dict[str, torch.Tensor]]:
        return {} if self.best_state is None else {self.name: self.best_state}

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step, "best_state": self.best_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict["best_score"]
        self.best_step = state_dict["best_step"]
        self.best_state = state_dict["best_state"]
