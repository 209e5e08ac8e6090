"""EMA of a module's network weights as a callback, built on timm's `ModelEmaV3`.

Contract with the module: the network to average is the submodule ``getattr(pl_module, attribute)``
(default ``net``); its parameters and buffers are averaged, nothing else is touched. Any module that keeps its
network in an attribute works (`DiffusionModule.net`, `ImageClassifier.backbone`, ...).

- The EMA is updated after every optimizer step on every rank; ranks hold identical weights under DDP, so their
  EMAs are identical and nothing is communicated. As in timm, the first update (step 1) copies the weights and
  later ones use ``decay``. ``warmup`` uses timm's decay warm-up
  ``1 - (1 + step / gamma)^-power`` (helpful when ``decay`` = 0.9999 and the run is short).
- Validation during fit runs with the EMA weights (swapped in at ``on_validation_start`` and out at
  ``on_validation_end``), so sample grids and validation losses are the EMA model's.
- Checkpoints hold the EMA weights in ``state_dict`` (so ``test``/``predict --ckpt_path`` use them with no
  callback) and the live weights under ``ema_live_state_dict`` plus the EMA in the callback state, so
  ``fit --ckpt_path`` resumes exactly.
- At the end of fit the module holds the EMA weights; `weight_variants()` offers "last" (live) and "ema".
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from timm.utils import ModelEmaV3
from torch import nn


def _swap(a: nn.Module, b: nn.Module) -> None:
    """Exchange the values of two modules' parameters and buffers, matched by name."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        raise RuntimeError("EMA and live networks have different state keys")
    with torch.no_grad():
        for name, ta in sa.items():
            tb = sb[name]
            tmp = ta.clone()
            ta.copy_(tb)
            tb.copy_(tmp)


class EMA(Callback):
    """Exponential moving average of ``pl_module.<attribute>`` (timm `ModelEmaV3`).

    Args:
        decay: EMA decay (official ANT/DiT: 0.9999; use 0.999 or ``warmup`` for short runs).
        attribute: name of the averaged submodule.
        warmup, warmup_gamma, warmup_power: timm's decay warm-up.
        update_every: update every this many optimizer steps.
    """

    def __init__(
        self,
        decay: float = 0.9999,
        attribute: str = "net",
        warmup: bool = False,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2 / 3,
        update_every: int = 1,
    ) -> None:
        super().__init__()
        self.decay, self.attribute = decay, attribute
        self.warmup, self.warmup_gamma, self.warmup_power = warmup, warmup_gamma, warmup_power
        self.update_every = update_every
        self.ema: ModelEmaV3 | None = None
        self._last_step = -1
        self._swapped = False
        self._finished = False
        self._live_state: dict[str, torch.Tensor] | None = None

    def _net(self, pl_module: L.LightningModule) -> nn.Module:
        net = getattr(pl_module, self.attribute, None)
        if not isinstance(net, nn.Module):
            raise AttributeError(
                f"EMA needs the module to keep its network in the attribute {self.attribute!r}"
            )
        return net

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.ema is None:
            self.ema = ModelEmaV3(
                self._net(pl_module),
                decay=self.decay,
                use_warmup=self.warmup,
                warmup_gamma=self.warmup_gamma,
                warmup_power=self.warmup_power,
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.ema.module.to(pl_module.device)
        if self._last_step < 0:
            self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._last_step:  # no optimizer step (gradient accumulation)
            return
        self._last_step = step
        if step % self.update_every == 0:
            self.ema.update(self._net(pl_module), step=step)

    @property
    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        return self.ema.module.state_dict()

    # validation with EMA weights
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.ema is not None and not self._finished and trainer.state.fn == TrainerFn.FITTING:
            _swap(self._net(pl_module), self.ema.module)
            self._swapped = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            _swap(self._net(pl_module), self.ema.module)
            self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = self._net(pl_module)
        self._live_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
        net.load_state_dict(self.ema_state_dict)
        self._finished = True

    def weight_variants(self, pl_module: L.LightningModule) -> dict[str, dict[str, torch.Tensor]]:
        """ "last" (live) and "ema" weights after fit, for the CLI's end-of-fit table."""
        if self._live_state is None:
            return {}
        ema = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        last = {**ema, **{f"{self.attribute}.{k}": v for k, v in self._live_state.items()}}
        return {"last": last, "ema": ema}

    # checkpoints
    def state_dict(self) -> dict[str, Any]:
        ema = None if self.ema is None else {k: v.detach().cpu() for k, v in self.ema_state_dict.items()}
        return {"ema": ema, "last_step": self._last_step, "decay": self.decay}

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ):
        """``state_dict`` gets the EMA network; the live network goes to ``ema_live_state_dict``."""
        if self.ema is None:
            return
        if self._finished:  # the module already holds the EMA weights
            if self._live_state is not None:
                checkpoint["ema_live_state_dict"] = self._live_state
            return
        live_net = self._net(pl_module).state_dict() if not self._swapped else self.ema_state_dict
        ema_net = self.ema_state_dict if not self._swapped else self._net(pl_module).state_dict()
        checkpoint["ema_live_state_dict"] = {k: v.detach().cpu().clone() for k, v in live_net.items()}
        state = dict(checkpoint["state_dict"])
        for k, v in ema_net.items():
            state[f"{self.attribute}.{k}"] = v.detach().clone()
        checkpoint["state_dict"] = state

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ):
        """Resuming a fit: live network back into the module and the EMA restored; test/predict: nothing."""
        if trainer.state.fn != TrainerFn.FITTING or self.ema is None:
            return
        if "ema_live_state_dict" in checkpoint:
            self._net(pl_module).load_state_dict(checkpoint["ema_live_state_dict"])
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
            self._last_step = state["last_step"]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """State is restored in `on_load_checkpoint`, which knows whether we are fitting."""
