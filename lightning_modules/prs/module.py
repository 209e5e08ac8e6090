"""PRSClassifier: ImageClassifier with the ViT training recipe the PRS experiments need.

Adds to the foundation's `ImageClassifier` (same metrics, logged names and batches):
- AdamW with decoupled weight decay, none on biases, norms, gates and positional parameters (timm/DeiT rule);
- linear warmup then cosine decay to `min_lr`, stepped per optimizer step;
- label smoothing, and optional mixup / cutmix (timm's `Mixup`, soft targets);
- the contracts of the PRS tools, forwarded to the backbone: `reparam_layers()` for
  `callbacks.reparam.ReparameterizationSchedule` and `feature_maps(x)` for `scripts/fourier_analysis.py`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from timm.data import Mixup
from torch import nn

from lightning_modules.classifier import ImageClassifier
from lightning_modules.common import guard_finite_loss, unpack_batch

NO_DECAY_NAMES = ("centers", "alpha", "gate")


class PRSClassifier(ImageClassifier):
    """Backbone -> dropout -> linear, trained with AdamW, warmup-cosine, label smoothing and mixup/cutmix.

    Args:
        backbone, num_classes, input_shape, domain_names, pretrained, pretrained_path, allow_download, dropout,
            freeze_bn, on_nonfinite_loss: as in `ImageClassifier`
            (`prs_vit_digits`, `prs_vit_tiny`, `prs_vit_tiny_patch16`, or any timm name for baselines).
        lr: peak AdamW learning rate (after warmup).
        weight_decay: decoupled weight decay on weight matrices and kernels.
        warmup_epochs: linear warmup length in epochs (fractional allowed; 0: none).
        min_lr: floor of the cosine decay.
        label_smoothing: cross-entropy label smoothing.
        mixup_alpha, cutmix_alpha: Beta parameters of mixup and cutmix (0: off); with both, one of the two per
            batch (timm's `switch_prob` 0.5).
    """

    def __init__(
        self,
        backbone: str = "prs_vit_tiny",
        num_classes: int = 100,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        domain_names: list[str] | None = None,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        allow_download: bool = False,
        dropout: float = 0.0,
        lr: float = 5e-4,
        weight_decay: float = 0.05,
        warmup_epochs: float = 5.0,
        min_lr: float = 1e-5,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        freeze_bn: bool = False,
        on_nonfinite_loss: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__(
            backbone=backbone,
            num_classes=num_classes,
            input_shape=input_shape,
            domain_names=domain_names,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            allow_download=allow_download,
            dropout=dropout,
            lr=lr,
            weight_decay=weight_decay,
            freeze_bn=freeze_bn,
            on_nonfinite_loss=on_nonfinite_loss,
        )
        self.save_hyperparameters()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(
                mixup_alpha=mixup_alpha,
                cutmix_alpha=cutmix_alpha,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )

    # ----- contracts of the PRS tools -------------------------------------------------------------------------
    def reparam_layers(self) -> list[nn.Module]:
        """The backbone's reparameterizable layers, input to output (empty for a plain backbone)."""
        layers = getattr(self.backbone, "reparam_layers", None)
        return list(layers()) if callable(layers) else []

    def feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-layer feature maps (B, C, H, W) of the backbone, in depth order."""
        return self.backbone.feature_maps(x)

    # ----- training -------------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        x, y, _ = unpack_batch(batch)
        if self.mixup is not None:
            x, soft = self.mixup(x, y)
            loss = torch.sum(-soft * F.log_softmax(self(x), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
        loss = guard_finite_loss(self, loss, self.hparams.on_nonfinite_loss)
        if loss is None:
            return None
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 or name.endswith(NO_DECAY_NAMES) else decay).append(p)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, self.trainer.num_training_batches // self.trainer.accumulate_grad_batches)
        warmup = min(int(round(self.hparams.warmup_epochs * per_epoch)), total - 1)
        floor = self.hparams.min_lr / self.hparams.lr

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
