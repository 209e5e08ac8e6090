"""Inception Score (IS) through torchmetrics' `InceptionScore`, with a pluggable classifier.

``IS = exp(E_x KL(p(y|x) || p(y)))`` with ``p(y|x)`` the softmax of a classifier's logits on image x and ``p(y)``
the mean of ``p(y|x)`` over the images of a split. torchmetrics shuffles the images (global torch RNG), cuts them
into ``splits`` chunks, computes IS on each chunk and returns the mean and the standard deviation over chunks.
``splits=10`` is the standard protocol (Salimans et al., 2016, "Improved techniques for training GANs": 50k
samples in 10 splits of 5k); with few samples each split's marginal ``p(y)`` is poorly estimated and IS is biased
low, so compare IS only at equal sample counts and splits.

Images reach the metric as uint8 [0, 255] (what a PNG holds), as for FID (`fid.py`). The classifier is:

- ``inception``: torch-fidelity's Inception-v3, its 1008-way ``logits_unbiased`` (torchmetrics' and
  torch-fidelity's default for IS), read from the same local weights file as FID
  (``pt_inception-2015-12-05-6726825d.pth``). torchmetrics' `InceptionScore` has no weights-path argument and would
  download them, so the extractor is built here from the file; a missing path or file is an error, never a
  download.
- ``classifier``: the class logits of an `ImageClassifier` checkpoint (e.g. the digits judge
  ``checkpoints/fid/digits_classifier.ckpt``), loaded by `fid.ClassifierFeatures.from_checkpoint(logits=True)`:
  uint8 images are mapped to the classifier's [-1, 1] input range, channel count and size. This is not the
  Inception Score of the literature (our spec: IS has no meaningful pluggable substitute); it is the same formula
  on another classifier, comparable only with itself (e.g. across guides on the digits).
- any ``nn.Module`` mapping uint8 images ``(N, C, H, W)`` to logits ``(N, K)`` (torchmetrics calls it on every
  ``update`` and applies the softmax itself).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.image import inception
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from lightning_modules.diffusion.fid import CLASSIFIER_HINT, INCEPTION_HINT, ClassifierFeatures

IS_FEATURES = ("inception", "classifier")


class InceptionScore(inception.InceptionScore):
    """torchmetrics' `InceptionScore`, safe under DDP when ranks made different numbers of ``update`` calls.

    torchmetrics keeps one tensor per ``update`` in its ``features`` list state with ``dist_reduce_fx=None``, and
    its sync gathers that list element by element: a rank with more updates than another (uneven shares of an
    evaluation set, or batches without generated images) waits in a gather the others never join, and the job
    hangs. Here every rank first concatenates its features into exactly one float32 tensor (``(0, K)`` when it
    saw no image; K is agreed across ranks), so every rank makes the same gathers.
    """

    def _sync_dist(
        self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None
    ) -> None:
        group = process_group or self.process_group
        k = torch.tensor([self.features[0].shape[1] if self.features else 0], device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(k, op=torch.distributed.ReduceOp.MAX, group=group)
        local = (
            dim_zero_cat(self.features).float()
            if self.features
            else torch.zeros(0, int(k), device=self.device)
        )
        self.features = [local]
        super()._sync_dist(dist_sync_fn, process_group)


def inception_logits(weights_path: str | None) -> nn.Module:
    """torch-fidelity's Inception-v3 (``logits_unbiased``, never leaving eval mode) from a local weights file."""
    if not weights_path or not Path(weights_path).is_file():
        raise FileNotFoundError(f"Inception weights file {weights_path!r} not found. {INCEPTION_HINT}")
    try:
        from torchmetrics.image.fid import NoTrainInceptionV3

        return NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["logits_unbiased"],
            feature_extractor_weights_path=weights_path,
        )
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"{e}. {INCEPTION_HINT}") from e


def build_inception_score(
    feature: str | nn.Module = "inception", weights_path: str | None = None, splits: int = 10
) -> InceptionScore:
    """An `InceptionScore` fed uint8 images (``normalize=False``) with the chosen classifier (module docstring).

    Args:
        feature: ``inception``, ``classifier`` or an ``nn.Module`` (uint8 images -> logits).
        weights_path: the Inception weights file (``inception``) or the `ImageClassifier` checkpoint
            (``classifier``).
        splits: number of chunks IS is averaged over; 10 is the standard protocol (Salimans et al.).
    """
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    if isinstance(feature, nn.Module):
        extractor = feature
    elif feature == "inception":
        extractor = inception_logits(weights_path)
    elif feature == "classifier":
        if not weights_path:
            raise FileNotFoundError(
                f"the IS classifier checkpoint (is_weights_path) is not set. {CLASSIFIER_HINT}"
            )
        extractor = ClassifierFeatures.from_checkpoint(weights_path, logits=True)
    else:
        raise ValueError(f"IS feature must be 'inception', 'classifier' or an nn.Module, got {feature!r}")
    return InceptionScore(feature=extractor, splits=splits, normalize=False)
