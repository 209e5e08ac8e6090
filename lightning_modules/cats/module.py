"""CATsModule: cost-aggregation transformers for semantic correspondence (Cho et al., NeurIPS 2021).

Pipeline per pair (target, source): hyperpixel features of both -> cosine correlation per level -> mutual-NN
filter -> transformer aggregator (appearance tokens, intra/inter-level attention, swapping, residuals) -> mean over
levels -> soft-argmax flow (target -> source, temperature `beta`) -> EPE against the keypoint-derived sparse flow.
With `aggregate: false` the aggregator is skipped (the raw-correlation baseline: mean of the filtered correlation).

Batches are dicts from the CATs datamodules (`datamodules/cats.py`):
  src_img, trg_img (B, 3, S, S); src_kps, trg_kps (B, K, 2) pixels, padded; n_pts (B,); src_bbox, trg_bbox
  (B, 4) x1 y1 x2 y2 pixels; category (B,) ints.

Logged: train/loss (EPE, cells), val/loss, {val,test}/pck_<alpha> (percent, mean over pairs) and
test/pck_<alpha>/<category>. `num_classes` and `input_shape` are linked from the datamodule by the CLI
(`num_classes` = number of categories).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from torch import nn

from lightning_modules.cats.flow import epe_loss, keypoints_to_flow, pck_threshold, transfer_keypoints
from lightning_modules.cats.metrics import PCK
from lightning_modules.cats.nets import (
    HyperpixelBackbone,
    TransformerAggregator,
    correlation,
    hard_argmax_flow,
    mutual_nn_filter,
    soft_argmax_flow,
)
from lightning_modules.common import check_finite_loss

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CATsModule(L.LightningModule):
    """CATs with a timm ResNet hyperpixel backbone.

    Args:
        backbone: timm ResNet name (`resnet101.tv_in1k` in the paper; a small `resnet18` for CPU demos).
        backbone_kwargs: extra timm kwargs (e.g. `channels`, `stem_width` for a tiny demo ResNet).
        hyperpixel_ids: levels (0 = after maxpool, i = i-th residual block before its last ReLU).
        feature_size: side of the correlation grid (16 at 256x256 in the paper).
        proj_dim, depth, heads, mlp_ratio: aggregator (128, 1, 6, 4 in the official training).
        beta: soft-argmax temperature (0.02).
        aggregate: False gives the raw-correlation baseline (no aggregator).
        freeze_backbone: no gradients AND BatchNorm statistics frozen (backbone kept in eval mode).
        lr, backbone_lr, weight_decay, milestones, gamma: AdamW groups + MultiStepLR (epochs).
        alphas, threshold_mode: PCK alphas and reference threshold (bbox / image / kps).
        direction: keypoint transfer at evaluation, `trg_to_src` (official) or `src_to_trg` (DHPF/CHM).
        kp_sampling: `official_int` (integer read of the upsampled flow) or `bilinear`.
        flow_readout: `soft` (soft-argmax) or `hard` (argmax) at evaluation.
        num_classes, input_shape: linked from the datamodule (categories; (3, S, S) images).
    """

    def __init__(
        self,
        backbone: str = "resnet101.tv_in1k",
        backbone_kwargs: dict[str, Any] | None = None,
        hyperpixel_ids: list[int] = (0, 8, 20, 21, 26, 28, 29, 30),
        feature_size: int = 16,
        proj_dim: int = 128,
        depth: int = 1,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        beta: float = 0.02,
        aggregate: bool = True,
        freeze_backbone: bool = False,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        allow_download: bool = False,
        lr: float = 3e-5,
        backbone_lr: float = 3e-6,
        weight_decay: float = 0.05,
        milestones: list[int] = (70, 80, 90),
        gamma: float = 0.5,
        alphas: list[float] = (0.05, 0.1, 0.15),
        threshold_mode: Literal["bbox", "image", "kps"] = "bbox",
        direction: Literal["trg_to_src", "src_to_trg"] = "trg_to_src",
        kp_sampling: Literal["official_int", "bilinear"] = "official_int",
        flow_readout: Literal["soft", "hard"] = "soft",
        num_classes: int = 1,
        input_shape: tuple[int, int, int] = (3, 256, 256),
    ) -> None:
        super().__init__()
        for name, value, allowed in (
            ("threshold_mode", threshold_mode, ("bbox", "image", "kps")),
            ("direction", direction, ("trg_to_src", "src_to_trg")),
            ("kp_sampling", kp_sampling, ("official_int", "bilinear")),
            ("flow_readout", flow_readout, ("soft", "hard")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if input_shape[1] != input_shape[2]:
            raise ValueError(f"CATs needs square inputs, got input_shape {tuple(input_shape)}")
        self.save_hyperparameters()
        self.image_size = int(input_shape[1])
        self.features = HyperpixelBackbone(
            backbone,
            list(hyperpixel_ids),
            feature_size,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            allow_download=allow_download,
            **(backbone_kwargs or {}),
        )
        self.aggregator: TransformerAggregator | None = None
        self.projections = nn.ModuleList()
        if aggregate:
            self.projections = nn.ModuleList(nn.Linear(c, proj_dim) for c in self.features.channels)
            self.aggregator = TransformerAggregator(
                len(hyperpixel_ids), feature_size, proj_dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio
            )
        if freeze_backbone:
            self.features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.val_pck = PCK(tuple(alphas), num_classes)
        self.test_pck = PCK(tuple(alphas), num_classes)

    def train(self, mode: bool = True) -> CATsModule:
        """Keep a frozen backbone in eval mode so its BatchNorm running statistics never change."""
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.features.eval()
        return self

    def _project(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(
            [proj(f.flatten(2).transpose(1, 2)) for proj, f in zip(self.projections, feats, strict=True)],
            dim=1,
        )

    def correlation(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The (aggregated, or raw mean-over-levels) correlation `(B, Ns, Nt)` of images in [0, 1]."""
        src_feats = self.features((source - self.mean) / self.std)
        trg_feats = self.features((target - self.mean) / self.std)
        corr = mutual_nn_filter(correlation(src_feats, trg_feats))
        if self.aggregator is None:
            return corr.mean(dim=1)
        return self.aggregator(corr, self._project(src_feats), self._project(trg_feats))

    def forward(self, target: torch.Tensor, source: torch.Tensor, readout: str | None = None) -> torch.Tensor:
        """Dense flow target -> source `(B, 2, h, w)` in cell units (the official call order)."""
        corr = self.correlation(target, source)
        if (readout or "soft") == "hard":
            return hard_argmax_flow(corr)
        return soft_argmax_flow(corr, self.hparams.beta)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        check_finite_loss(loss, self.global_step)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["n_pts"].shape[0])
        return loss

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        flow = self(batch["trg_img"], batch["src_img"])
        gt, mask = keypoints_to_flow(
            batch["src_kps"], batch["trg_kps"], batch["n_pts"], self.image_size, self.hparams.feature_size
        )
        return epe_loss(flow, gt, mask)

    def predict_keypoints(
        self, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Transfer keypoints in the configured direction: returns (predicted, ground truth, PCK threshold)."""
        hp = self.hparams
        if hp.direction == "trg_to_src":
            query, gt, ref_bbox = batch["trg_kps"], batch["src_kps"], batch["src_bbox"]
            flow = self(batch["trg_img"], batch["src_img"], readout=hp.flow_readout)
        else:
            query, gt, ref_bbox = batch["src_kps"], batch["trg_kps"], batch["trg_bbox"]
            flow = self(batch["src_img"], batch["trg_img"], readout=hp.flow_readout)
        pred = transfer_keypoints(flow, query, self.image_size, hp.kp_sampling)
        thr = pck_threshold(
            hp.threshold_mode, bbox=ref_bbox, kps=gt, n_pts=batch["n_pts"], image_size=self.image_size
        )
        return pred, gt, thr

    def _evaluate(self, batch: dict[str, torch.Tensor], metric: PCK, stage: str) -> None:
        pred, gt, thr = self.predict_keypoints(batch)
        metric.update(pred, gt, batch["n_pts"], thr, batch.get("category"))
        if stage == "val":
            self.log("val/loss", self._loss(batch), batch_size=batch["n_pts"].shape[0], sync_dist=True)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_pck, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_pck, "test")

    def _log_pck(self, metric: PCK, stage: str, per_category: bool) -> None:
        result = metric.compute()
        names = getattr(getattr(self.trainer, "datamodule", None), "category_names", None)
        for a, alpha in enumerate(metric.alphas):
            self.log(f"{stage}/pck_{alpha:g}", result["overall"][a].float(), sync_dist=False)
            if per_category and metric.num_categories > 1:
                for c in range(metric.num_categories):
                    if not torch.isnan(result["per_category"][a, c]):
                        name = names[c] if names and c < len(names) else str(c)
                        self.log(f"{stage}/pck_{alpha:g}/{name}", result["per_category"][a, c].float())
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_pck(self.val_pck, "val", per_category=False)

    def on_test_epoch_end(self) -> None:
        self._log_pck(self.test_pck, "test", per_category=True)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Dense target -> source flow in pixels at the input resolution, `(B, 2, S, S)`."""
        flow = self(batch["trg_img"], batch["src_img"], readout=self.hparams.flow_readout)
        cell = self.image_size / flow.shape[-1]
        dense = torch.nn.functional.interpolate(
            flow, size=(self.image_size, self.image_size), mode="bilinear"
        )
        return {"flow": dense * cell}

    def configure_optimizers(self):
        hp = self.hparams
        groups = [
            {"params": [p for p in self.features.parameters() if p.requires_grad], "lr": hp.backbone_lr}
        ]
        head = [p for n, p in self.named_parameters() if not n.startswith("features.") and p.requires_grad]
        if head:
            groups.append({"params": head, "lr": hp.lr})
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError("nothing to train: the backbone is frozen and aggregate is false")
        opt = torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones), gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
