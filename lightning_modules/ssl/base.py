"""SSLModule: the base LightningModule of the contrastive / self-supervised methods (solo-learn style).

The base owns the backbone (`build_backbone`: timm by name or `small_cnn`, optional CIFAR stem), the online linear
probe on detached features, the optimizer and warmup-cosine schedule, the eval step that feeds the k-NN callback,
and the reduction of per-pair losses. A method subclass only builds its heads (`build_heads`) and computes its
per-pair losses (`ssl_losses`). A momentum-encoder method (e.g. DenseCL/HoughCL) adds its momentum networks in
`build_heads`, updates them in `on_train_batch_end`, and keeps queues as buffers; nothing in the base assumes two
symmetric branches beyond the list of views.

Batches (from `datamodules.ssl`): training batches are dicts with `views` (list of normalised view tensors),
`raw_views` (the same views un-normalised, in [0, 1]), `labels` and optionally `clean` (the un-augmented image in
[0, 1]); eval batches are `(x, y)`.

Per-pair contract (used by `callbacks.scorecl.ScoreWeighting`):
  `pair_reducer`     a settable callable mapping the per-pair losses (N,) of this process to the scalar that is
                     optimised; the default is the mean. Extra batch-level terms (VICReg's variance and
                     covariance) are added outside it and never weighted.
  `last_pair_losses` the detached per-pair losses of the latest training step, shape (N,).
  `raw_views(batch)` the un-normalised views (list of (N, C, H, W) tensors in [0, 1]); `clean_images(batch)` the
                     un-augmented images or None.

Eval contract (used by `callbacks.knn.OnlineKNN`): the datamodule's val/test loaders are `[bank, queries]` (the
labelled training set without augmentation, then the evaluation set); `validation_step`/`test_step` return
`{"feats": backbone features, "labels": y}`.

Logged: train/loss, train/ssl_loss, train/probe_loss, and {val,test}/linear/acc1 (online probe top-1 on queries).
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.common import check_finite_loss, unpack_batch
from lightning_modules.nets.backbones import build_backbone
from lightning_modules.ssl.optim import build_optimizer, split_params, warmup_cosine_scheduler


def mean_reducer(pair_losses: torch.Tensor) -> torch.Tensor:
    """The default pair reducer: the plain mean."""
    return pair_losses.mean()


def apply_cifar_stem(net: nn.Module, in_chans: int) -> None:
    """Replace a ResNet's 7x7/2 stem and max-pool with a 3x3/1 conv and no pool (the CIFAR variant)."""
    if not (hasattr(net, "conv1") and hasattr(net, "maxpool")):
        raise ValueError(
            "cifar_stem needs a ResNet-style backbone with `conv1` and `maxpool` (e.g. timm resnet18)"
        )
    out = net.conv1.out_channels
    net.conv1 = nn.Conv2d(in_chans, out, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()


class SSLModule(L.LightningModule):
    """Base of the SSL methods. Subclasses implement `build_heads(feat_dim)` and `ssl_losses(feats, batch)`.

    Args:
        backbone: `small_cnn` or a timm model name (`resnet18` for the CIFAR recipes).
        cifar_stem: 3x3 stride-1 first conv and no max-pool (solo-learn's CIFAR ResNets).
        num_classes, input_shape: linked from the datamodule by the CLI.
        pretrained, pretrained_path, allow_download: see `build_backbone` (nothing downloads by default).
        backbone_kwargs: extra arguments for the backbone (e.g. `{width: 16}` for small_cnn).
        optimizer: lars | sgd | adam | adamw; lr is the base LR for a global batch of 256 when `scale_lr`.
        weight_decay, momentum, lars_eta, lars_clip, exclude_bias_n_norm: optimizer details (solo-learn's).
        scale_lr: multiply lr (and probe_lr) by global batch / 256.
        warmup_epochs, warmup_start_factor, min_lr_factor: warmup-cosine schedule, stepped per step.
        probe_lr: LR of the online linear probe (no weight decay, never LARS-adapted).
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        cifar_stem: bool = False,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        pretrained: bool = False,
        pretrained_path: str | None = None,
        allow_download: bool = False,
        backbone_kwargs: dict | None = None,
        proj_hidden_dim: int = 2048,
        proj_output_dim: int = 256,
        optimizer: str = "lars",
        lr: float = 0.4,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        lars_eta: float = 0.02,
        lars_clip: bool = True,
        exclude_bias_n_norm: bool = True,
        scale_lr: bool = True,
        warmup_epochs: float = 10.0,
        warmup_start_factor: float = 0.0,
        min_lr_factor: float = 0.0,
        probe_lr: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        in_chans, height, _ = input_shape
        self.backbone, self.feat_dim = build_backbone(
            backbone,
            in_chans=in_chans,
            image_size=height,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            allow_download=allow_download,
            **(backbone_kwargs or {}),
        )
        if cifar_stem:
            apply_cifar_stem(self.backbone, in_chans)
        self.build_heads(self.feat_dim)
        self.probe = nn.Linear(self.feat_dim, num_classes)
        self.val_probe_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_probe_acc = MulticlassAccuracy(num_classes, average="micro")
        self.pair_reducer: Callable[[torch.Tensor], torch.Tensor] = mean_reducer
        self.last_pair_losses: torch.Tensor | None = None

    # ----- what a method defines -------------------------------------------------------------------------
    def build_heads(self, feat_dim: int) -> None:
        """Create the projector (and predictor, momentum networks, queues) as attributes."""
        raise NotImplementedError

    def ssl_losses(self, feats: list[torch.Tensor], batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Return `(per_pair (N,), extra scalar, logs)` from the backbone features of each view."""
        raise NotImplementedError

    def head_param_groups(self) -> list[dict]:
        """Parameter groups of the heads (override to give e.g. a predictor a fixed LR)."""
        heads = nn.ModuleList(
            m
            for n, m in self.named_children()
            if n not in ("backbone", "probe", "val_probe_acc", "test_probe_acc")
        )
        return split_params(heads, self.hparams.exclude_bias_n_norm)

    # ----- contract helpers ------------------------------------------------------------------------------
    def raw_views(self, batch: dict) -> list[torch.Tensor]:
        """The un-normalised views in [0, 1] (ScoreCL's inputs)."""
        return batch["raw_views"]

    def clean_images(self, batch: dict) -> torch.Tensor | None:
        """The un-augmented images in [0, 1], when the datamodule supplies them (`clean_view: true`)."""
        return batch.get("clean")

    def gather_with_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """All ranks' `x` concatenated along dim 0 (differentiable) and this rank's row offset in it."""
        if self._trainer is None or self._trainer.world_size <= 1:
            return x, 0
        gathered = self.all_gather(x, sync_grads=True)
        return gathered.flatten(0, 1), self.global_rank * x.shape[0]

    # ----- training --------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features (the representation evaluated by k-NN and the probe)."""
        return self.backbone(x)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if not isinstance(batch, dict) or "views" not in batch:
            raise ValueError(
                "SSL training batches must be dicts with 'views' (use a datamodules.ssl datamodule)"
            )
        views, labels = batch["views"], batch["labels"]
        feats = [self.backbone(v) for v in views]
        per_pair, extra, logs = self.ssl_losses(feats, batch)
        if per_pair.ndim != 1 or per_pair.shape[0] != views[0].shape[0]:
            raise RuntimeError(f"ssl_losses must return one loss per pair, got shape {tuple(per_pair.shape)}")
        n_probe = min(2, len(feats))
        probe_logits = self.probe(torch.cat(feats[:n_probe]).detach())
        probe_loss = F.cross_entropy(probe_logits, labels.repeat(n_probe))
        return self.combine_losses(per_pair, extra, probe_loss, logs)

    def combine_losses(
        self, per_pair: torch.Tensor, extra: torch.Tensor | float, probe_loss: torch.Tensor, logs: dict
    ) -> torch.Tensor:
        """The optimised loss from per-pair losses (through `pair_reducer`, ScoreCL's hook), batch-level terms and
        the probe's loss; checked for non-finite values and logged. Every SSL module's training step ends here."""
        self.last_pair_losses = per_pair.detach()
        ssl_loss = self.pair_reducer(per_pair) + extra
        loss = ssl_loss + probe_loss
        check_finite_loss(loss, self.global_step)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/ssl_loss", ssl_loss)
        self.log("train/probe_loss", probe_loss)
        for name, value in logs.items():
            self.log(f"train/{name}", value)
        return loss

    # ----- evaluation ------------------------------------------------------------------------------------
    def _eval_step(self, batch, dataloader_idx: int, metric: MulticlassAccuracy) -> dict[str, torch.Tensor]:
        x, y, _ = unpack_batch(batch)
        feats = self.backbone(x)
        if dataloader_idx == 1:
            metric.update(self.probe(feats), y)
        return {"feats": feats.detach(), "labels": y}

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, dataloader_idx, self.val_probe_acc)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, dataloader_idx, self.test_probe_acc)

    def on_validation_epoch_end(self) -> None:
        if self.val_probe_acc.update_count:
            self.log("val/linear/acc1", self.val_probe_acc.compute(), prog_bar=True)
        self.val_probe_acc.reset()

    def on_test_epoch_end(self) -> None:
        if self.test_probe_acc.update_count:
            self.log("test/linear/acc1", self.test_probe_acc.compute())
        self.test_probe_acc.reset()

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        feats = self.backbone(x)
        return {"feats": feats, "pred": self.probe(feats).argmax(dim=1)}

    # ----- optimisation ----------------------------------------------------------------------------------
    def global_batch_size(self) -> int:
        """Per-process batch size (from the datamodule) times the number of processes."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "batch_size"):
            raise ValueError("scale_lr needs a datamodule with `batch_size`; set scale_lr: false otherwise")
        return int(dm.batch_size) * self.trainer.world_size

    def configure_optimizers(self):
        hp = self.hparams
        scale = self.global_batch_size() / 256 if hp.scale_lr else 1.0
        lr = hp.lr * scale
        groups = split_params(self.backbone, hp.exclude_bias_n_norm) + self.head_param_groups()
        groups.append(
            {
                "params": list(self.probe.parameters()),
                "lr": hp.probe_lr * scale,
                "weight_decay": 0.0,
                "lars_exclude": True,
            }
        )
        optimizer = build_optimizer(
            hp.optimizer, groups, lr, hp.weight_decay, hp.momentum, hp.lars_eta, hp.lars_clip
        )
        total = int(self.trainer.estimated_stepping_batches)
        max_epochs = self.trainer.max_epochs or 0
        warmup = int(round(hp.warmup_epochs * total / max_epochs)) if max_epochs > 0 else 0
        scheduler = warmup_cosine_scheduler(
            optimizer, warmup, total, hp.warmup_start_factor, hp.min_lr_factor
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
