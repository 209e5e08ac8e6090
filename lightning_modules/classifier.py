"""ImageClassifier: ERM image classification, the base of the domain-generalization experiments (SWAD).

The module owns the network (a backbone from `build_backbone`, dropout, a linear head), the cross-entropy loss,
Adam with the SWAD paper's defaults, and per-domain metrics. Batches are `(x, y)` or `(x, y, domain)`; with domains,
validation reports the mean over the domains present of each domain's mean loss and accuracy (DomainBed's
training-domain validation) and test reports each target domain's accuracy.

Logged names (other parts of the framework rely on them):
  val/src_loss  mean over source domains of the per-domain mean cross-entropy (SWAD's valley signal)
  val/acc       mean over source domains of per-domain accuracy (ERM model selection, the "iid" row)
  test/acc      mean over target domains of per-domain accuracy; test/acc/<domain> per domain
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.common import guard_finite_loss, unpack_batch
from lightning_modules.metrics import PerDomainMeans
from lightning_modules.nets.backbones import build_backbone


class ImageClassifier(L.LightningModule):
    """ERM classifier: backbone -> dropout -> linear, trained with cross-entropy and Adam.

    Args:
        backbone: `small_cnn` or a timm model name (`resnet50.tv_in1k` for the papers).
        num_classes, input_shape, domain_names: filled from the datamodule by the CLI (link_arguments).
        pretrained, pretrained_path, allow_download: see `build_backbone`; nothing downloads by default.
        dropout: dropout on the pooled feature (DomainBed's `resnet_dropout`).
        lr, weight_decay: Adam hyperparameters (SWAD paper: 5e-5 and 0).
        freeze_bn: keep every BatchNorm in eval mode during training (DomainBed's ResNet does; SWAD relies on it).
        on_nonfinite_loss: "raise" stops at a NaN/inf loss with the step number; "skip" skips that batch.
    """

    def __init__(
        self,
        backbone: str = "resnet50.tv_in1k",
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (3, 224, 224),
        domain_names: list[str] | None = None,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        allow_download: bool = False,
        dropout: float = 0.0,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        freeze_bn: bool = False,
        on_nonfinite_loss: Literal["raise", "skip"] = "raise",
    ) -> None:
        super().__init__()
        if on_nonfinite_loss not in ("raise", "skip"):
            raise ValueError(f"on_nonfinite_loss must be 'raise' or 'skip', got {on_nonfinite_loss!r}")
        self.save_hyperparameters()
        in_chans, height, _ = input_shape
        self.backbone, feat_dim = build_backbone(
            backbone,
            in_chans=in_chans,
            image_size=height,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            allow_download=allow_download,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feat_dim, num_classes)
        self.domain_names = list(domain_names) if domain_names else ["all"]
        n_domains = len(self.domain_names)
        self.val_metrics = PerDomainMeans(n_domains)
        self.test_metrics = PerDomainMeans(n_domains)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.backbone(x)))

    def train(self, mode: bool = True) -> ImageClassifier:
        """Switch modes, keeping BatchNorm frozen (eval) when `freeze_bn` is set, as DomainBed's ResNet does."""
        super().train(mode)
        if mode and self.hparams.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = unpack_batch(batch)
        logits = self(x)
        loss = guard_finite_loss(self, F.cross_entropy(logits, y), self.hparams.on_nonfinite_loss)
        if loss is None:
            return None
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, metrics: PerDomainMeans) -> None:
        x, y, domains = unpack_batch(batch)
        if domains is None:
            domains = torch.zeros_like(y)
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        metrics.update(losses, logits.argmax(dim=1) == y, domains)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics)

    def _log_domain_metrics(self, metrics: PerDomainMeans, stage: str) -> None:
        out = metrics.compute()  # synced across ranks: identical on every rank
        metrics.reset()
        log = partial(
            self.log, sync_dist=True
        )  # identical values; syncing them only silences Lightning's warning
        present = out["present"]
        if not bool(present.any()):
            return
        loss_name = "val/src_loss" if stage == "val" else f"{stage}/loss"
        log(loss_name, out["loss"][present].mean().float(), prog_bar=stage == "val")
        log(f"{stage}/acc", out["acc"][present].mean().float(), prog_bar=True)
        for i in present.nonzero().flatten().tolist():
            name = self.domain_names[i]
            log(f"{stage}/acc/{name}", out["acc"][i].float())
            log(f"{stage}/loss/{name}", out["loss"][i].float())

    def on_validation_epoch_end(self) -> None:
        self._log_domain_metrics(self.val_metrics, "val")

    def on_test_epoch_end(self) -> None:
        self._log_domain_metrics(self.test_metrics, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        probs = self(x).softmax(dim=1)
        return {"probs": probs, "pred": probs.argmax(dim=1)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
