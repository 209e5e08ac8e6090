"""FID through torchmetrics' `FrechetInceptionDistance`, with a pluggable feature extractor.

Images reach the metric as uint8 [0, 255] (what a PNG holds), real and generated alike.

- ``inception``: torch-fidelity's Inception-v3 (2048-d pool features), read from a local weights file
  (``pt_inception-2015-12-05-6726825d.pth``). torchmetrics would download it when no path is given, so a missing
  path or file is an error here, never a download.
- ``classifier``: the penultimate features of an `ImageClassifier` checkpoint (the digits demo: train it with
  ``python cli.py fit -c configs/fid/digits_classifier.yaml``). Inputs are converted to the classifier's input
  range [-1, 1], channel count and size.
- any ``nn.Module`` with a ``num_features`` attribute that maps uint8 images to features (tests use a tiny
  random one).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

INCEPTION_HINT = (
    "FID with Inception needs torch-fidelity (pip install torch-fidelity) and its Inception weights as a local file: "
    "on a machine with internet download "
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/pt_inception-2015-12-05-6726825d.pth "
    "and pass --model.init_args.fid_weights_path /path/to/pt_inception-2015-12-05-6726825d.pth "
    "(the same file serves the Inception Score: is_weights_path). Nothing is downloaded at run time."
)
CLASSIFIER_HINT = (
    "The digits FID feature extractor is a classifier checkpoint; train it first (about a minute on CPU):\n"
    "  python cli.py fit -c configs/fid/digits_classifier.yaml\n"
    "which writes checkpoints/fid/digits_classifier.ckpt."
)


class ClassifierFeatures(nn.Module):
    """Penultimate features of a trained classifier for uint8 images of any size and channel count.

    Args:
        backbone: maps ``(N, C, S, S)`` float images in [-1, 1] to ``(N, D)`` features.
        num_features: D.
        in_chans, image_size: the classifier's input channels and side.
    """

    def __init__(self, backbone: nn.Module, num_features: int, in_chans: int, image_size: int) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.num_features = int(num_features)
        self.in_chans = in_chans
        self.image_size = image_size

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 127.5 - 1.0 if images.dtype == torch.uint8 else images.float()
        if x.shape[1] != self.in_chans:
            x = x.mean(dim=1, keepdim=True).expand(-1, self.in_chans, -1, -1)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return self.backbone(x).flatten(1)

    @classmethod
    def from_checkpoint(cls, path: str, logits: bool = False) -> ClassifierFeatures:
        """Load an `ImageClassifier` checkpoint and keep its backbone (``logits``: backbone and head, so the
        outputs are the class logits, as the Inception Score and a judge of class accuracy need)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"FID classifier checkpoint {path!r} not found. {CLASSIFIER_HINT}")
        from lightning_modules.classifier import ImageClassifier

        clf = ImageClassifier.load_from_checkpoint(path, map_location="cpu")
        in_chans, size, _ = clf.hparams.input_shape
        if logits:
            return cls(
                nn.Sequential(clf.backbone, nn.Flatten(1), clf.head), clf.head.out_features, in_chans, size
            )
        return cls(clf.backbone, clf.head.in_features, in_chans, size)


def build_fid(
    feature: str | nn.Module = "classifier", weights_path: str | None = None
) -> FrechetInceptionDistance:
    """A `FrechetInceptionDistance` fed uint8 images (``normalize=False``) with the chosen extractor."""
    if isinstance(feature, nn.Module):
        extractor: int | nn.Module = feature
    elif feature == "inception":
        if not weights_path or not Path(weights_path).is_file():
            raise FileNotFoundError(f"Inception weights file {weights_path!r} not found. {INCEPTION_HINT}")
        try:
            return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights_path)
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(f"{e}. {INCEPTION_HINT}") from e
    elif feature == "classifier":
        if not weights_path:
            raise FileNotFoundError(f"fid_weights_path is not set. {CLASSIFIER_HINT}")
        extractor = ClassifierFeatures.from_checkpoint(weights_path)
    else:
        raise ValueError(f"fid feature must be 'inception', 'classifier' or an nn.Module, got {feature!r}")
    return FrechetInceptionDistance(feature=extractor, normalize=False)
