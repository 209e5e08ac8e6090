"""Small helpers every LightningModule of the framework uses."""

from __future__ import annotations

import warnings

import torch


def _nonfinite_message(loss: torch.Tensor, step: int, what: str) -> str:
    return (
        f"{what} is {loss.detach().flatten()[:4].tolist()} at global step {step}: training stopped. "
        "Lower the learning rate, check the inputs for NaN/inf, use gradient clipping "
        "(--trainer.gradient_clip_val), or skip such batches (on_nonfinite_loss: skip)."
    )


def check_finite_loss(loss: torch.Tensor, step: int, what: str = "training loss") -> None:
    """Stop at once, with the step number, when a loss is NaN or infinite (instead of training on garbage)."""
    if not torch.isfinite(loss).all():
        raise FloatingPointError(_nonfinite_message(loss, step, what))


def guard_finite_loss(module, loss: torch.Tensor, policy: str = "raise") -> torch.Tensor | None:
    """Return `loss`, or act on a NaN/inf loss: `policy="raise"` stops training, `"skip"` returns None.

    Returning None from `training_step` skips the batch (no backward, no optimizer step). Under DDP the
    decision is reduced across ranks first (act if any rank's loss is bad), so every rank skips or stops at the
    same batch and the gradient all-reduce stays in step.
    """
    if policy not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite_loss must be 'raise' or 'skip', got {policy!r}")
    bad = not bool(torch.isfinite(loss).all())
    trainer = getattr(module, "_trainer", None)
    if trainer is not None and trainer.world_size > 1:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if not bad:
        return loss
    if policy == "raise":
        raise FloatingPointError(_nonfinite_message(loss, module.global_step, "training loss (on some rank)"))
    module.skipped_batches = getattr(module, "skipped_batches", 0) + 1
    warnings.warn(
        f"non-finite training loss at global step {module.global_step}: batch skipped "
        f"({module.skipped_batches} so far)",
        RuntimeWarning,
        stacklevel=2,
    )
    return None


def unpack_batch(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Accept `(x, y)` or `(x, y, domain)` batches; return `(x, y, domain_or_None)`."""
    if not isinstance(batch, (list, tuple)) or len(batch) not in (2, 3):
        raise ValueError(f"expected a batch (x, y) or (x, y, domain), got {type(batch).__name__}")
    if len(batch) == 2:
        return batch[0], batch[1], None
    return batch[0], batch[1], batch[2]
