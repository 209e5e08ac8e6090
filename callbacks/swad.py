"""SWAD and SWA: dense weight averaging as a callback that works on any LightningModule.

Contract with the module: its parameters are averaged (nothing else is touched), and during validation it logs
`monitor` (default `val/src_loss`: the live model's loss on the source domains' held-out data, un-augmented).
Validation must run at a fixed step interval F (the framework's multi-domain datamodules make one epoch F
steps), so each validation closes a segment of F iterates.

How it runs:
- after every optimizer step, the segment's running mean is updated in place on the module's device
  (`torch._foreach_lerp_`, no per-step copy);
- at each validation the segment is closed (kept on CPU with its loss) and `LossValley` decides which segments join
  the average; joined segments are added to a float64 sum weighted by their iterate counts, so the result is the
  arithmetic mean of every iterate in the window;
- when the valley dies, `trainer.should_stop` is set (same decision on every rank: the loss is synced);
- checkpoints hold the averaged weights in `state_dict` (so `cli.py test --ckpt_path` evaluates SWAD) and the
  live weights plus the callback's queue in the callback state (so `fit --ckpt_path` resumes training exactly);
- at the end of training the averaged weights are loaded into the module; `weight_variants()` returns the live
  ("last") and averaged weights for the CLI's end-of-fit table.

BatchNorm: with frozen BN (DomainBed's ResNet) the live buffers are used as they are. If some BatchNorm trains,
`bn_update_steps` > 0 recomputes its statistics for the averaged weights on that many training batches.

Under DDP every rank holds the same parameters and sees the same synced loss, so every rank builds the same
average as one process would on the same global batch; nothing is communicated.

`mode="swa"` gives plain SWA: a uniform average of every iterate after `swa_start_step`
(default: half of `trainer.max_steps`), no valley and no early stop.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from callbacks.loss_valley import LossValley


def _bn_trains(module: nn.Module) -> bool:
    """True if some BatchNorm of `module` updates its statistics in training mode."""
    was_training = module.training
    module.train()
    trains = any(m.training for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    module.train(was_training)
    return trains


class SWAD(Callback):
    """Stochastic Weight Averaging Densely (Cha et al., NeurIPS 2021), or plain SWA with `mode="swa"`.

    Args:
        monitor: validation metric that is the live model's source-domain loss.
        n_converge: N_s, losses that decide the valley's start (paper: 3).
        n_tolerance: N_e, losses above the threshold that end the valley (paper: 6).
        tolerance_ratio: r - 1; the threshold is (1 + r) times the mean of the converging losses (paper: 0.3,
            VLCS 0.2).
        lookback: how many checkpoints before the converge point the start may move back (official code: 3).
        bn_update_steps: training batches used to recompute BatchNorm statistics for the average, when BN trains.
        early_stop: stop training when the valley ends.
        mode: "swad" (loss valley) or "swa" (uniform average from `swa_start_step`).
        swa_start_step: first step averaged in SWA mode; default half of `trainer.max_steps`.
    """

    def __init__(
        self,
        monitor: str = "val/src_loss",
        n_converge: int = 3,
        n_tolerance: int = 6,
        tolerance_ratio: float = 0.3,
        lookback: int = 3,
        bn_update_steps: int = 0,
        early_stop: bool = True,
        mode: Literal["swad", "swa"] = "swad",
        swa_start_step: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("swad", "swa"):
            raise ValueError(f"mode must be 'swad' or 'swa', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.early_stop = early_stop
        self.bn_update_steps = bn_update_steps
        self.swa_start_step = swa_start_step
        self.valley = LossValley(n_converge, n_tolerance, tolerance_ratio, lookback)
        self._reset_state()

    @property
    def name(self) -> str:
        return self.mode

    def _reset_state(self) -> None:
        self._seg_avg: list[torch.Tensor] | None = None  # running mean of the open segment (module device)
        self._seg_n = 0
        self._seg_first_step = 0
        self._last_step = -1
        self._segments: dict[int, dict[str, Any]] = {}  # closed segments that may still join (CPU)
        self._sum: list[torch.Tensor] | None = None  # float64 sum of joined iterates (CPU)
        self._n_sum = 0
        self._start_step: int | None = None
        self._end_step: int | None = None
        self._live_state: dict[str, torch.Tensor] | None = None
        self._finished = False

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _params(pl_module: nn.Module) -> list[torch.Tensor]:
        return [p for p in pl_module.parameters()]

    def _swa_start(self, trainer: L.Trainer) -> int:
        if self.swa_start_step is not None:
            return self.swa_start_step
        if trainer.max_steps and trainer.max_steps > 0:
            return trainer.max_steps // 2
        raise ValueError("SWA mode needs swa_start_step or trainer.max_steps")

    @property
    def n_averaged(self) -> int:
        """Number of iterates in the average so far."""
        return self._n_sum

    def averaged_parameters(self) -> list[torch.Tensor] | None:
        """The mean of every averaged iterate, one tensor per module parameter (CPU), or None if none yet."""
        if self._sum is None or self._n_sum == 0:
            return None
        return [s / self._n_sum for s in self._sum]

    def averaged_state_dict(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor] | None:
        """The module's state dict with averaged parameters (buffers from the live module)."""
        avg = self.averaged_parameters()
        if avg is None:
            return None
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        names = [n for n, _ in pl_module.named_parameters()]
        for name, value in zip(names, avg, strict=True):
            state[name] = value.to(dtype=state[name].dtype, device=state[name].device)
        return state

    # ---------------------------------------------------------------- per step
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_step < 0:  # a fresh run: the weights before the first optimizer step are no iterate
            self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # gradient accumulation: no optimizer step happened
            return
        self._last_step = step
        if self._finished or (self.mode == "swa" and step <= self._swa_start(trainer)):
            return
        params = [p.detach() for p in self._params(pl_module)]
        if self._seg_avg is None or self._seg_n == 0:
            self._seg_avg = [p.clone() for p in params]
            self._seg_n = 1
            self._seg_first_step = step
            return
        self._seg_n += 1
        torch._foreach_lerp_(self._seg_avg, params, 1.0 / self._seg_n)

    # ---------------------------------------------------------------- per validation
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self._finished:
            return
        if self._seg_n == 0:
            return
        index = len(self.valley.losses)
        segment = {
            "n": self._seg_n,
            "first_step": self._seg_first_step,
            "last_step": self._last_step,
            "params": [t.detach().to("cpu", copy=True) for t in self._seg_avg],
        }
        self._seg_n = 0
        if self.mode == "swa":
            self._join(segment)
            return
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(
                f"SWAD needs the module to log {self.monitor!r} during validation (the live model's loss on the "
                f"source domains' held-out data); logged: {sorted(trainer.callback_metrics)}"
            )
        loss = float(trainer.callback_metrics[self.monitor])
        self._segments[index] = segment
        joined, dead = self.valley.add(loss)
        for i in joined:
            self._join(self._segments.pop(i))
        keep = self.valley.keep_from()
        for i in [i for i in self._segments if i < keep]:
            del self._segments[i]
        self._log(trainer, pl_module)
        if dead:
            rank_zero_info(
                f"SWAD: the loss valley ended at step {trainer.global_step}; averaged {self._n_sum} iterates"
            )
            if self.early_stop:
                trainer.should_stop = True

    def _join(self, segment: dict[str, Any]) -> None:
        if self._sum is None:
            self._sum = [torch.zeros_like(p, dtype=torch.float64) for p in segment["params"]]
            self._start_step = segment["first_step"]
        for s, p in zip(self._sum, segment["params"], strict=True):
            s.add_(p.double(), alpha=segment["n"])
        self._n_sum += segment["n"]
        self._end_step = segment["last_step"]

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {
            "swad/converged": float(self.valley.converged),
            "swad/n_averaged": float(self._n_sum),
        }
        if self.valley.threshold is not None:
            metrics["swad/threshold"] = self.valley.threshold
        if self._start_step is not None:
            metrics["swad/start_step"] = float(self._start_step)
            metrics["swad/end_step"] = float(self._end_step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # ---------------------------------------------------------------- end of training
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.valley.finish()
        self._segments.clear()
        self._finished = True
        self._live_state = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        averaged = self.averaged_state_dict(pl_module)
        if averaged is None:
            rank_zero_info(f"{self.name.upper()}: no loss valley was found; the last weights are kept.")
            self._log(trainer, pl_module)
            return
        pl_module.load_state_dict(averaged)
        if self.bn_update_steps > 0 and _bn_trains(pl_module):
            loader = trainer.train_dataloader
            batches = itertools.islice(iter(loader), self.bn_update_steps)
            torch.optim.swa_utils.update_bn(
                (
                    [b[0].to(pl_module.device) if isinstance(b, (list, tuple)) else b.to(pl_module.device)]
                    for b in batches
                ),
                pl_module,
                device=None,
            )
        rank_zero_info(
            f"{self.name.upper()}: averaged {self._n_sum} iterates (steps {self._start_step}..{self._end_step}); "
            "the module now holds the averaged weights."
        )

    def weight_variants(self, pl_module: L.LightningModule) -> dict[str, dict[str, torch.Tensor]]:
        """Weights to compare after fit: "last" (live) and the average (same as last if no valley was found)."""
        if self._live_state is None:
            return {}
        averaged = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        return {"last": self._live_state, self.name: averaged}

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "valley": self.valley.state_dict(),
            "seg_avg": None if self._seg_avg is None else [t.detach().cpu() for t in self._seg_avg],
            "seg_n": self._seg_n,
            "seg_first_step": self._seg_first_step,
            "last_step": self._last_step,
            "segments": self._segments,
            "sum": self._sum,
            "n_sum": self._n_sum,
            "start_step": self._start_step,
            "end_step": self._end_step,
            "finished": self._finished,
        }

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Store the averaged weights as the checkpoint's weights and keep the live ones for resuming."""
        if self._finished:  # the module already holds the final averaged weights
            if self._live_state is not None and self.n_averaged > 0:
                checkpoint["swad_live_state_dict"] = self._live_state
            return
        averaged = self.averaged_state_dict(pl_module)
        if averaged is not None:
            checkpoint["swad_live_state_dict"] = checkpoint["state_dict"]
            checkpoint["state_dict"] = averaged

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """When resuming a fit, put the live weights back and restore the queue; in test/predict do nothing."""
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if "swad_live_state_dict" in checkpoint:
            pl_module.load_state_dict(checkpoint["swad_live_state_dict"])
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is None:
            return
        self.valley.load_state_dict(copy.deepcopy(state["valley"]))
        device = pl_module.device
        self._seg_avg = None if state["seg_avg"] is None else [t.to(device) for t in state["seg_avg"]]
        self._seg_n = state["seg_n"]
        self._seg_first_step = state["seg_first_step"]
        self._last_step = state["last_step"]
        self._segments = state["segments"]
        self._sum = state["sum"]
        self._n_sum = state["n_sum"]
        self._start_step = state["start_step"]
        self._end_step = state["end_step"]
        self._finished = state["finished"]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """State is restored in `on_load_checkpoint`, which knows whether we are fitting."""
