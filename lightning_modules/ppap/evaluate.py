"""GuidedSampleEvaluator: `cli.py test` of a folder of guided samples (PPAP part 3, evaluation).

The data is `datamodules.ppap.GuidedSamplesDataModule`: the samples ``<i:06d>_y<class>.png`` written by
``cli.py predict -c configs/ppap/*_sample.yaml`` and real images, as uint8 batches ``(images, labels, source)``.
Reported (all torchmetrics states, so under DDP they are gathered across ranks before ``compute``):

- ``test/accuracy``: top-1 accuracy of an independent judge classifier on the samples with respect to their target
  class (conditional fidelity; spec §5); ``test/real_accuracy``: the judge's accuracy on the real images when they
  have classes (an ImageFolder layout or the digits): the ceiling to read ``test/accuracy`` against;
- ``test/fid``: FID of the samples against the real images (`lightning_modules.diffusion.fid.build_fid`:
  ``inception`` from a local weights file, or an `ImageClassifier` checkpoint's penultimate features);
- ``test/is`` (and ``test/is_std`` over the splits when ``is_splits > 1``): the Inception Score of the samples
  (`lightning_modules.diffusion.inception_score.build_inception_score`: ``inception``, ``classifier``, or
  ``judge`` = the judge's own logits);
- ``test/num_samples``, ``test/num_real``: images counted (each exactly once, also under DDP).

The judge is a timm model by name (``judge``; pretrained weights from ``judge_pretrained_path`` or the local Hugging
Face cache, never downloaded, as for the PPAP teachers) or a checkpoint of our `ImageClassifier` (``judge_ckpt``).
It sees the uint8 images mapped to [-1, 1], converted to its channel count, resized (bilinear, antialiased) to its
input side, then normalised by ``judge_mean`` / ``judge_std`` of [0, 1] images (defaults: the timm model's
pretrained statistics; none for our checkpoints, which are trained on [-1, 1] images).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.diffusion.fid import ClassifierFeatures, build_fid
from lightning_modules.diffusion.inception_score import build_inception_score
from lightning_modules.ppap.nets import GuideNet, InputAdapter, load_classifier, own_hyperparameters

FID_FEATURES = ("inception", "classifier", "none")
IS_FEATURES = ("inception", "classifier", "judge", "none")


def build_judge(
    judge: str | None,
    judge_ckpt: str | None,
    num_classes: int,
    pretrained: bool = True,
    pretrained_path: str | None = None,
    input_size: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ClassifierFeatures:
    """The judge as a module mapping uint8 images ``(N, C, H, W)`` to logits ``(N, num_classes)``."""
    if (judge is None) == (judge_ckpt is None):
        raise ValueError(
            "give exactly one of judge (a timm name) and judge_ckpt (an ImageClassifier checkpoint)"
        )
    if judge_ckpt is not None:
        if not Path(judge_ckpt).is_file():
            raise FileNotFoundError(
                f"judge checkpoint {judge_ckpt!r} not found. The digits judge is the FID digits classifier: "
                "python cli.py fit -c configs/fid/digits_classifier.yaml (writes checkpoints/fid/digits_classifier.ckpt)"
            )
        with own_hyperparameters():
            net = ClassifierFeatures.from_checkpoint(judge_ckpt, logits=True)
        if net.num_features != num_classes:
            raise ValueError(
                f"judge checkpoint {judge_ckpt!r} has {net.num_features} classes, data has {num_classes}"
            )
        if mean is not None or std is not None:
            net.backbone = GuideNet(InputAdapter(None, mean, std), net.backbone)
        if input_size is not None:
            net.image_size = int(input_size)
        return net
    classifier = load_classifier(judge, None, num_classes, 3, pretrained, pretrained_path)
    cfg = getattr(classifier, "pretrained_cfg", None) or {}
    if mean is None and std is None and "mean" in cfg:
        mean, std = cfg["mean"], cfg["std"]
    size = int(input_size or cfg.get("input_size", (3, 224, 224))[-1])
    return ClassifierFeatures(GuideNet(InputAdapter(None, mean, std), classifier), num_classes, 3, size)


class GuidedSampleEvaluator(L.LightningModule):
    """Judged accuracy, FID and IS of a folder of guided samples (module docstring); nothing to train.

    Args:
        judge, judge_ckpt: the independent classifier: a timm name or an `ImageClassifier` checkpoint.
        num_classes: linked from the datamodule by the CLI.
        judge_pretrained, judge_pretrained_path: the timm judge's weights (local only).
        judge_input_size, judge_mean, judge_std: the judge's input side and normalisation (see the module
            docstring; None: the defaults).
        fid_feature, fid_weights_path: ``inception`` (the Inception weights file), ``classifier`` (an
            `ImageClassifier` checkpoint) or ``none``.
        is_feature, is_weights_path: ``inception`` (the same Inception weights file), ``classifier`` (an
            `ImageClassifier` checkpoint), ``judge`` (the judge's logits) or ``none``.
        is_splits: IS splits; 10 is the standard protocol (Salimans et al.), meant for 50k samples.
        is_seed: seed of the shuffle before IS is split (the same on every rank).
    """

    def __init__(
        self,
        judge: str | None = None,
        judge_ckpt: str | None = None,
        num_classes: int = 10,
        judge_pretrained: bool = True,
        judge_pretrained_path: str | None = None,
        judge_input_size: int | None = None,
        judge_mean: list[float] | None = None,
        judge_std: list[float] | None = None,
        fid_feature: str = "classifier",
        fid_weights_path: str | None = None,
        is_feature: str = "classifier",
        is_weights_path: str | None = None,
        is_splits: int = 10,
        is_seed: int = 0,
    ) -> None:
        super().__init__()
        if fid_feature not in FID_FEATURES:
            raise ValueError(f"fid_feature must be one of {FID_FEATURES}, got {fid_feature!r}")
        if is_feature not in IS_FEATURES:
            raise ValueError(f"is_feature must be one of {IS_FEATURES}, got {is_feature!r}")
        self.save_hyperparameters()
        self.judge = build_judge(
            judge,
            judge_ckpt,
            num_classes,
            judge_pretrained,
            judge_pretrained_path,
            judge_input_size,
            judge_mean,
            judge_std,
        )
        with own_hyperparameters():  # checkpoints loaded inside this __init__ must keep their own hparams
            self.fid = None if fid_feature == "none" else build_fid(fid_feature, fid_weights_path)
            if is_feature == "none":
                self.inception_score = None
            else:
                self.inception_score = build_inception_score(
                    self.judge if is_feature == "judge" else is_feature, is_weights_path, is_splits
                )
        self.accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.real_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.num_samples, self.num_real, self.num_real_labelled = SumMetric(), SumMetric(), SumMetric()

    @staticmethod
    def _rgb(images: torch.Tensor, feature: str) -> torch.Tensor:
        """Inception takes 3 channels: grayscale images are repeated."""
        return images.expand(-1, 3, -1, -1) if feature == "inception" and images.shape[1] == 1 else images

    def test_step(self, batch, batch_idx: int) -> None:
        images, labels, source = batch
        hp = self.hparams
        samples, real = images[source == 0], images[source == 1]
        if len(samples):
            self.accuracy.update(self.judge(samples), labels[source == 0])
            if self.fid is not None:
                self.fid.update(self._rgb(samples, hp.fid_feature), real=False)
            if self.inception_score is not None:
                self.inception_score.update(self._rgb(samples, hp.is_feature))
        if len(real):
            if self.fid is not None:
                self.fid.update(self._rgb(real, hp.fid_feature), real=True)
            labelled = labels[source == 1] >= 0
            if labelled.any():
                self.real_accuracy.update(self.judge(real[labelled]), labels[source == 1][labelled])
            self.num_real_labelled.update(labelled.sum())
        self.num_samples.update(len(samples))
        self.num_real.update(len(real))

    def on_test_epoch_end(self) -> None:
        # every compute() gathers its states from all ranks, so every rank computes (in the same order) and logs
        # the same global value
        metrics = {
            "test/accuracy": self.accuracy.compute(),
            "test/num_samples": self.num_samples.compute(),
            "test/num_real": self.num_real.compute(),
        }
        if self.num_real_labelled.compute() > 0:
            metrics["test/real_accuracy"] = self.real_accuracy.compute()
        if self.fid is not None:
            metrics["test/fid"] = self.fid.compute()
        if self.inception_score is not None:
            # the split shuffle: seeded, identical on every rank; with one split its std is undefined (not logged)
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*degrees of freedom.*")
                torch.manual_seed(self.hparams.is_seed)
                mean, std = self.inception_score.compute()
            metrics["test/is"] = mean
            if self.hparams.is_splits > 1:
                metrics["test/is_std"] = std
        # Lightning advises syncing epoch-level values under DDP: these already are global
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            for name, value in metrics.items():
                self.log(
                    name, torch.as_tensor(value, dtype=torch.float32, device=self.device), sync_dist=False
                )
        for metric in (
            self.accuracy,
            self.real_accuracy,
            self.num_samples,
            self.num_real,
            self.num_real_labelled,
        ):
            metric.reset()
        for metric in (self.fid, self.inception_score):
            if metric is not None:
                metric.reset()
