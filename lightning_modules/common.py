"""Small helpers every LightningModule of the framework uses."""

from __future__ import annotations

import torch


def check_finite_loss(loss: torch.Tensor, step: int, what: str = "training loss") -> None:
    """Stop at once, with the step number, when a loss is NaN or infinite (instead of training on garbage)."""
    if not torch.isfinite(loss).all():
        raise FloatingPointError(
            f"{what} is {loss.detach().flatten()[:4].tolist()} at global step {step}: training stopped. "
            "Lower the learning rate, check the inputs for NaN/inf, or use gradient clipping "
            "(--trainer.gradient_clip_val)."
        )


def unpack_batch(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Accept `(x, y)` or `(x, y, domain)` batches; return `(x, y, domain_or_None)`."""
    if not isinstance(batch, (list, tuple)) or len(batch) not in (2, 3):
        raise ValueError(f"expected a batch (x, y) or (x, y, domain), got {type(batch).__name__}")
    if len(batch) == 2:
        return batch[0], batch[1], None
    return batch[0], batch[1], batch[2]
