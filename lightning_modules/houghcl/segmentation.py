"""Semantic segmentation with a light head: the dense downstream evaluation of HoughCL / DenseCL backbones.

Network: a backbone's last feature map (`small_cnn` or a timm CNN by name; `backbone_kwargs: {output_stride: 8}`
gives a dilated ResNet as in FCN-D8) -> an FCN-style head (`head_convs` x [3x3 conv, BN, ReLU], dropout, 1x1 conv
to `num_classes`) -> bilinear upsampling to the input size. Loss: pixel cross-entropy ignoring 255, averaged over
the labelled pixels of the batch. Metric: mIoU = torchmetrics `MulticlassJaccardIndex(average="macro",
ignore_index=255)`, whose state is a confusion matrix summed across processes, so the DDP value equals one
process's; classes absent from both prediction and ground truth are left out of the mean (VOC convention).

Initialisation (`init_from`): a HoughCL/DenseCL Lightning checkpoint (its `backbone.*` weights, or
`momentum_backbone.*` with `init_key: momentum_backbone`), or a plain backbone state dict such as
`scripts/houghcl_export_backbone.py` writes (a torchvision ResNet state dict also works: `fc.*` is dropped). Every
backbone tensor must be found with the right shape, or a clear error says which are missing. `freeze_backbone`
keeps the backbone fixed (and its BatchNorm in eval mode): only the head learns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from lightning_modules.common import guard_finite_loss
from lightning_modules.houghcl.module import feature_map
from lightning_modules.nets.backbones import build_backbone

IGNORE_INDEX = 255


def load_backbone_weights(
    path: str | Path, key: Literal["backbone", "momentum_backbone"] = "backbone"
) -> dict[str, torch.Tensor]:
    """Backbone tensors from a Lightning checkpoint (`<key>.*`, prefix removed) or a plain state dict file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"init_from {path} does not exist: pass a HoughCL/DenseCL checkpoint (logs/.../last.ckpt) or a "
            "backbone exported by scripts/houghcl_export_backbone.py"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means an unreadable file
        raise ValueError(f"init_from {path} cannot be read as a torch file: {err}") from err
    if not isinstance(state, dict):
        raise ValueError(f"init_from {path} holds a {type(state).__name__}, not a state dict or checkpoint")
    if "state_dict" in state:
        prefix = f"{key}."
        out = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
        if not out:
            raise ValueError(
                f"checkpoint {path} has no '{prefix}*' weights (not a DenseCLModule checkpoint?)"
            )
        return out
    return {k: v for k, v in state.items() if torch.is_tensor(v) and not k.startswith("fc.")}


def fcn_head(in_dim: int, num_classes: int, channels: int = 256, num_convs: int = 1, dropout: float = 0.1):
    """FCN head: `num_convs` x (3x3 conv, BN, ReLU), dropout, 1x1 classifier (`num_convs=0`: a linear 1x1)."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_convs):
        layers += [
            nn.Conv2d(dim, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
        ]
        dim = channels
    layers += [nn.Dropout2d(dropout), nn.Conv2d(dim, num_classes, 1)]
    return nn.Sequential(*layers)


class SegmentationModule(L.LightningModule):
    """Backbone + FCN head, cross-entropy (ignore 255), mIoU.

    Args:
        backbone, backbone_kwargs: `small_cnn` or a timm CNN name and its extra arguments.
        num_classes, input_shape: linked from the datamodule by the CLI.
        init_from, init_key: initial backbone weights (see the module docstring); None = random init (or timm's
            offline `pretrained` weights).
        pretrained, pretrained_path, allow_download: `build_backbone`'s (nothing downloads by default).
        freeze_backbone: train the head only (backbone fixed, BatchNorm in eval mode).
        head_channels, head_convs, dropout: the FCN head.
        optimizer: sgd | adam | adamw; lr, momentum, weight_decay; backbone_lr_mult scales the backbone's LR.
        lr_schedule: poly (power 0.9, mmsegmentation's) | cosine | constant, stepped per optimiser step.
        on_nonfinite_loss: raise | skip (see `lightning_modules.common.guard_finite_loss`).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        backbone_kwargs: dict | None = None,
        num_classes: int = 21,
        input_shape: tuple[int, int, int] = (3, 512, 512),
        init_from: str | None = None,
        init_key: Literal["backbone", "momentum_backbone"] = "backbone",
        pretrained: bool = False,
        pretrained_path: str | None = None,
        allow_download: bool = False,
        freeze_backbone: bool = False,
        head_channels: int = 256,
        head_convs: int = 1,
        dropout: float = 0.1,
        optimizer: Literal["sgd", "adam", "adamw"] = "sgd",
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        backbone_lr_mult: float = 1.0,
        lr_schedule: Literal["poly", "cosine", "constant"] = "poly",
        on_nonfinite_loss: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be sgd, adam or adamw, got {optimizer!r}")
        if lr_schedule not in ("poly", "cosine", "constant"):
            raise ValueError(f"lr_schedule must be poly, cosine or constant, got {lr_schedule!r}")
        in_chans, height, width = input_shape
        self.backbone, _ = build_backbone(
            backbone,
            in_chans=in_chans,
            image_size=height,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            allow_download=allow_download,
            **(backbone_kwargs or {}),
        )
        if init_from:
            self.load_backbone(load_backbone_weights(init_from, init_key), init_from)
        self.backbone.eval()  # a shape probe: no BatchNorm statistics are touched
        with torch.no_grad():
            map_dim = feature_map(self.backbone, torch.zeros(1, in_chans, height, width)).shape[1]
        self.backbone.train()
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.head = fcn_head(map_dim, num_classes, head_channels, head_convs, dropout)
        metric = {"num_classes": num_classes, "ignore_index": IGNORE_INDEX}
        self.val_miou = MulticlassJaccardIndex(average="macro", **metric)
        self.test_miou = MulticlassJaccardIndex(average="macro", **metric)
        self.val_acc = MulticlassAccuracy(average="micro", **metric)
        self.test_acc = MulticlassAccuracy(average="micro", **metric)

    def load_backbone(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Load `state` into the backbone; every backbone tensor must be present with the same shape."""
        own = self.backbone.state_dict()
        missing = [k for k in own if k not in state]
        wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or wrong:
            raise ValueError(
                f"init_from {source} does not fit backbone {self.hparams.backbone!r}: {len(missing)} tensors "
                f"missing (e.g. {missing[:3]}), {len(wrong)} with other shapes (e.g. {wrong[:3]}); check "
                "backbone, backbone_kwargs and input channels against the pre-training config"
            )
        self.backbone.load_state_dict({k: state[k] for k in own})

    def train(self, mode: bool = True) -> SegmentationModule:
        """A frozen backbone stays in eval mode (its BatchNorm statistics are part of the pre-trained weights)."""
        super().train(mode)
        if mode and self.hparams.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits (B, num_classes, H, W) at the input resolution."""
        logits = self.head(feature_map(self.backbone, x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @staticmethod
    def pixel_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over labelled pixels (0 when a batch has none, instead of NaN)."""
        total = F.cross_entropy(logits, mask, ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (mask != IGNORE_INDEX).sum().clamp_min(1)

    @staticmethod
    def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (list, tuple)) or len(batch) != 2 or batch[1].dim() != 3:
            raise ValueError(
                "segmentation batches must be (images (B, C, H, W), masks (B, H, W)): datamodules.voc"
            )
        return batch[0], batch[1].long()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        x, mask = self._unpack(batch)
        loss = guard_finite_loss(self, self.pixel_loss(self(x), mask), self.hparams.on_nonfinite_loss)
        if loss is not None:
            self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, stage: str) -> None:
        x, mask = self._unpack(batch)
        logits = self(x)
        pred = logits.argmax(dim=1)
        miou, acc = (self.val_miou, self.val_acc) if stage == "val" else (self.test_miou, self.test_acc)
        miou.update(pred, mask)
        acc.update(pred, mask)
        self.log(f"{stage}/loss", self.pixel_loss(logits, mask), sync_dist=True, batch_size=x.shape[0])
        self.log(f"{stage}/miou", miou, prog_bar=True)
        self.log(f"{stage}/pixel_acc", acc)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return {"pred": self(x).argmax(dim=1)}

    def configure_optimizers(self):
        hp = self.hparams
        groups = [{"params": [p for p in self.head.parameters()], "lr": hp.lr}]
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        if backbone:
            groups.append({"params": backbone, "lr": hp.lr * hp.backbone_lr_mult})
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            cls = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
            opt = cls(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if hp.lr_schedule == "poly":
            sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total, power=0.9)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
