"""Optimizers and schedules of solo-learn's recipes: LARS (timm's), SGD, Adam/AdamW; linear warmup + cosine decay
stepped per optimizer step; learning rate scaled by global batch / 256.

Parameter groups may carry `fixed_lr: True` (SimSiam's predictor keeps a constant LR) and `lars_exclude: True`
(bias and normalisation parameters: no weight decay and, since timm's LARS adapts only groups with weight decay,
no LARS trust ratio, as solo-learn's `exclude_bias_n_norm`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from timm.optim import Lars
from torch import nn

OPTIMIZERS = ("lars", "sgd", "adam", "adamw")


def split_params(module: nn.Module, exclude_bias_n_norm: bool = True, **group_options) -> list[dict]:
    """The trainable parameters of `module` as one or two groups: regular, and (optionally) biases and norm
    weights (every parameter with fewer than 2 dimensions), which get no weight decay and no LARS adaptation."""
    regular, excluded = [], []
    for param in module.parameters():
        if not param.requires_grad:
            continue
        (excluded if exclude_bias_n_norm and param.ndim < 2 else regular).append(param)
    groups = [{"params": regular, **group_options}] if regular else []
    if excluded:
        groups.append({"params": excluded, **group_options, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def build_optimizer(
    name: str,
    groups: Iterable[dict],
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    lars_eta: float = 0.02,
    lars_clip: bool = True,
) -> torch.optim.Optimizer:
    """Build the optimizer by name; groups may override `lr`/`weight_decay`."""
    groups = list(groups)
    if name == "lars":
        # timm's Lars: trust_coeff is solo-learn's eta, trust_clip its clip_lr (ratio capped at 1 relative to lr).
        return Lars(
            groups,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coeff=lars_eta,
            trust_clip=lars_clip,
        )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")


def warmup_cosine_factor(
    step: int, warmup_steps: int, total_steps: int, start_factor: float = 0.0, min_factor: float = 0.0
) -> float:
    """LR multiplier at `step`: linear from `start_factor` to 1 over `warmup_steps`, then cosine to `min_factor`
    at `total_steps` (solo-learn's LinearWarmupCosineAnnealingLR, per step)."""
    if warmup_steps > 0 and step < warmup_steps:
        return start_factor + (1 - start_factor) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    start_factor: float = 0.0,
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR: warmup-cosine for every group, constant for groups marked `fixed_lr`."""

    def schedule(step: int) -> float:
        return warmup_cosine_factor(step, warmup_steps, total_steps, start_factor, min_factor)

    lambdas = [(lambda _step: 1.0) if g.get("fixed_lr") else schedule for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
