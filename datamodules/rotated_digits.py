"""Rotated digits: a tiny, CPU-friendly RotatedMNIST built from scikit-learn's bundled digits.

scikit-learn ships the 1,797 8x8 "digits" images (values 0..16, 10 classes) inside the package, so this
needs no download. Images are scaled to [0, 1], upsampled bilinearly to ``image_size``, shuffled with
``data_seed`` and dealt round-robin into one domain per angle (domain i takes ``images[i::n_domains]``),
each rotated by its angle (bilinear, fill 0), as DomainBed's RotatedMNIST does. Single channel, no
augmentation, no normalisation (values stay in [0, 1]). Used by SWAD's CPU experiment.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from datamodules.multidomain import DomainSpec, MultiDomainDataModule

NUM_DIGITS = 1797


def upsampled_digits(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All sklearn digits as ``(N, 1, S, S)`` float images in [0, 1] and ``(N,)`` int64 labels."""
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != images.shape[-1]:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0), torch.as_tensor(digits.target, dtype=torch.int64)


def rotate(images: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate a batch ``(N, C, H, W)`` counter-clockwise by ``angle`` degrees (bilinear, fill 0).

    Multiples of 360 are returned unchanged (bit-exact), so the 0-degree domain holds the originals.
    """
    if angle % 360 == 0:
        return images.clone()
    out = TF.rotate(images, float(angle), interpolation=InterpolationMode.BILINEAR, fill=0.0)
    return out.clamp_(0.0, 1.0)


class TensorPairs(Dataset):
    """``(images[i], int(labels[i]))`` over precomputed tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


class RotatedDigitsDataModule(MultiDomainDataModule):
    """sklearn digits dealt into rotated domains (RotatedMNIST-style); domains ``"0deg"``, ``"15deg"``, ...

    Args:
        angles: one domain per angle (degrees), in this order.
        image_size: side of the square single-channel images.
        data_seed: seed of the shuffle before the round-robin deal (fixed: it defines the domains,
            independently of ``trial_seed``, which defines the splits).
        The remaining arguments are those of :class:`MultiDomainDataModule`.
    """

    def __init__(
        self,
        angles: Sequence[int] = (0, 15, 30, 45, 60, 75),
        image_size: int = 16,
        data_seed: int = 0,
        test_envs: Sequence[int] = (0,),
        holdout_fraction: float = 0.2,
        trial_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        steps_per_epoch: int = 100,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int | None = None,
    ) -> None:
        angles = [int(a) for a in angles]
        if len(angles) < 2:
            raise ValueError(f"angles needs at least 2 entries (one domain each), got {angles}")
        if len(set(angles)) != len(angles):
            raise ValueError(f"angles must be distinct, got {angles}")
        if int(image_size) != image_size or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        names = tuple(f"{a}deg" for a in angles)
        spec = DomainSpec("RotatedDigits", names, 10, (1, int(image_size), int(image_size)))
        super().__init__(
            spec,
            test_envs=test_envs,
            holdout_fraction=holdout_fraction,
            trial_seed=trial_seed,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            steps_per_epoch=steps_per_epoch,
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=seed,
        )
        self.angles = angles
        self.image_size = int(image_size)
        self.data_seed = int(data_seed)
        self.domain_images: list[torch.Tensor] = []
        self.domain_labels: list[torch.Tensor] = []
        self.domain_source_indices: list[torch.Tensor] = []

    def _load_domains(self) -> list[int]:
        images, labels = upsampled_digits(self.image_size)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.data_seed))
        n = len(self.angles)
        self.domain_source_indices = [order[i::n] for i in range(n)]
        self.domain_images = [
            rotate(images[idx], a) for idx, a in zip(self.domain_source_indices, self.angles, strict=True)
        ]
        self.domain_labels = [labels[idx] for idx in self.domain_source_indices]
        return [len(y) for y in self.domain_labels]

    def _domain_dataset(self, domain: int, indices: list[int], train: bool) -> Dataset:
        index = torch.as_tensor(indices, dtype=torch.int64)
        return TensorPairs(self.domain_images[domain][index], self.domain_labels[domain][index])
