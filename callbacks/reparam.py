"""ReparameterizationSchedule: switch a module's conv-like layers to self-attention, each at its own epoch (PRS).

Contract with the module (no type checks):
- `pl_module.reparam_layers()` returns the reparameterizable layers ordered from input to output; without that
  method, every submodule that has both `is_attention` and `reparameterize` is taken, in `modules()` order;
- each layer exposes `is_attention` (bool) and `reparameterize()` (switch to the attention form, idempotent),
  and records its form in its own state dict, so a checkpoint restores it (e.g.
  `lightning_modules.prs.layers.ReparamAttention`, whose `attention_mode` buffer does this);
- with `ramp_epochs` > 0, each switched layer must also have `anneal(progress)`: before every training batch it is
  called with progress = (epochs since the layer's switch, fractional at batch resolution) / `ramp_epochs`,
  clipped to [0, 1] (ReparamAttention fades its hard relative attention out, to pure self-attention at 1).

Schedules, for layers l = 1..L (input to output), `E` = `trainer.max_epochs`:
- `prs` (PRS, default): e_l = round(end - (l - 1) (end - start) / (L - 1)): the last layer switches at `start`,
  the first at `end`, linearly in depth, so later layers become attention first (defaults: start = 0.2 E,
  end = 0.8 E; reconstructed, the paper's endpoints are unknown);
- `reverse`: the same line the other way round (first layer switches first), a control;
- `oneshot`: every layer at `at_epoch` (default E // 2);
- `start`: every layer at epoch 0 (attention from the first step, starting from the conv initialisation);
- `never`: no switch (all-convolution baseline).

A layer switches at the start of epoch e_l (`on_train_epoch_start`, before the epoch's first step), so it trains
e_l epochs as a convolution. The decision depends only on the epoch number and the schedule, so under DDP every
rank switches the same layers at the same epoch and nothing is communicated; nothing happens in rank-zero-only
code except the message. The annealing progress also depends only on the epoch and batch index. Each switch is
printed and the number of attention layers is logged as
`reparam/attention_layers` every epoch. On resume the layers' forms come back with the module's state dict;
the callback's state (the schedule and the epoch each layer actually switched) is saved in the checkpoint too,
and layers that the schedule says should already be attention are switched when training resumes.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

Mode = Literal["prs", "reverse", "oneshot", "start", "never"]


def reparam_layers(pl_module: nn.Module) -> list[nn.Module]:
    """The module's reparameterizable layers, input to output (see the contract above)."""
    explicit = getattr(pl_module, "reparam_layers", None)
    if callable(explicit):
        return list(explicit())
    return [m for m in pl_module.modules() if hasattr(m, "is_attention") and hasattr(m, "reparameterize")]


def switch_epochs(
    num_layers: int,
    max_epochs: int,
    mode: Mode = "prs",
    start: int | None = None,
    end: int | None = None,
    at_epoch: int | None = None,
) -> list[int | None]:
    """Epoch at which each layer (input to output) switches; None = never. See the module docstring."""
    if num_layers < 1:
        return []
    if mode == "never":
        return [None] * num_layers
    if mode == "start":
        return [0] * num_layers
    if mode == "oneshot":
        return [max_epochs // 2 if at_epoch is None else at_epoch] * num_layers
    if mode not in ("prs", "reverse"):
        raise ValueError(f"unknown schedule mode {mode!r}; choose prs, reverse, oneshot, start or never")
    start = round(0.2 * max_epochs) if start is None else start
    end = round(0.8 * max_epochs) if end is None else end
    if start > end:
        raise ValueError(f"start ({start}) must not exceed end ({end}): start is the earliest switch")
    if num_layers == 1:
        return [start]
    epochs = [round(end - i * (end - start) / (num_layers - 1)) for i in range(num_layers)]
    return epochs if mode == "prs" else epochs[::-1]


class ReparameterizationSchedule(Callback):
    """Switch reparameterizable layers from convolution to self-attention on a per-layer epoch schedule.

    Args:
        mode: `prs`, `reverse`, `oneshot`, `start` or `never` (see the module docstring).
        start: earliest switch epoch of the linear schedules (the deepest layer's under `prs`); default 0.2 E.
        end: latest switch epoch of the linear schedules (the first layer's under `prs`); default 0.8 E.
        at_epoch: the epoch of `oneshot` (default E // 2).
        ramp_epochs: epochs over which a switched layer is annealed to pure attention (`anneal`); 0: never
            annealed (the layer's own learned gate decides how much convolution it keeps).
    """

    def __init__(
        self,
        mode: Mode = "prs",
        start: int | None = None,
        end: int | None = None,
        at_epoch: int | None = None,
        ramp_epochs: float = 0.0,
    ) -> None:
        super().__init__()
        switch_epochs(1, 10, mode, start, end, at_epoch)  # validate the options early
        if ramp_epochs < 0:
            raise ValueError(f"ramp_epochs must be >= 0, got {ramp_epochs}")
        self.mode, self.start, self.end, self.at_epoch = mode, start, end, at_epoch
        self.ramp_epochs = float(ramp_epochs)
        self.schedule: list[int | None] = []
        self.switched_at: dict[int, int] = {}  # layer index -> epoch it switched (for the record)

    def _schedule(self, trainer: L.Trainer, layers: list[nn.Module]) -> list[int | None]:
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 0
        needs_epochs = self.mode in ("prs", "reverse") and None in (self.start, self.end)
        if (needs_epochs or (self.mode == "oneshot" and self.at_epoch is None)) and max_epochs <= 0:
            raise ValueError(
                f"ReparameterizationSchedule(mode={self.mode!r}) takes its default epochs from "
                "trainer.max_epochs, which is not set: set trainer.max_epochs or the callback's epochs"
            )
        return switch_epochs(len(layers), max_epochs, self.mode, self.start, self.end, self.at_epoch)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = reparam_layers(pl_module)
        if not layers:
            raise ValueError(
                "ReparameterizationSchedule found no reparameterizable layers: the module needs "
                "`reparam_layers()` or submodules with `is_attention` and `reparameterize()`"
            )
        self.schedule = self._schedule(trainer, layers)
        if self.ramp_epochs > 0 and self.mode != "never":
            lacking = [
                i + 1 for i, layer in enumerate(layers) if not callable(getattr(layer, "anneal", None))
            ]
            if lacking:
                raise ValueError(
                    f"ramp_epochs > 0 needs layers with anneal(progress); layers {lacking} have none"
                )
        rank_zero_info(f"ReparameterizationSchedule({self.mode}): switch epochs per layer {self.schedule}")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        layers = reparam_layers(pl_module)
        for index, (layer, when) in enumerate(zip(layers, self.schedule, strict=True)):
            if when is not None and epoch >= when and not layer.is_attention:
                layer.reparameterize()
                self.switched_at[index] = epoch
                rank_zero_info(f"epoch {epoch}: layer {index + 1}/{len(layers)} reparameterized to attention")
        count = sum(bool(layer.is_attention) for layer in layers)
        pl_module.log("reparam/attention_layers", float(count), on_step=False, on_epoch=True)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        if self.ramp_epochs <= 0:
            return
        per_epoch = (
            trainer.num_training_batches
        )  # inf for an iterable loader without length: epoch resolution
        now = trainer.current_epoch + (batch_idx / per_epoch if 0 < per_epoch < float("inf") else 0.0)
        for layer, when in zip(reparam_layers(pl_module), self.schedule, strict=True):
            if when is not None and layer.is_attention:
                layer.anneal((now - when) / self.ramp_epochs)

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "schedule": list(self.schedule), "switched_at": dict(self.switched_at)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.switched_at = {int(k): int(v) for k, v in state_dict.get("switched_at", {}).items()}
