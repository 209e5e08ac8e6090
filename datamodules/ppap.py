"""Data for PPAP: generated unlabelled images, labelled images for the baselines and evaluation, and the sample
indices still to generate (resumable generation).

`PPAPDataModule` items are ``(image in [-1, 1], label)``; generated images have label -1.

- ``train: generated`` (PPAP): a flat folder of PNGs ``<generated_root>/000000.png ...`` written by
  ``cli.py predict`` of the unconditional diffusion model (globbed and sorted; other files are ignored).
- ``train: labelled`` (the supervised baselines) and validation/test: ``labelled: digits`` (scikit-learn's bundled
  8x8 digits, the same seeded hold-out as `DigitsDataModule`, so the held-out images are never trained on), or
  ``labelled: imagefolder``: ImageNet's ``<labelled_root>/train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (class
  index = sorted wnid, as torchvision's ImageFolder).

Augmentation is a random horizontal flip of training images (``flip``; PPAP's only augmentation; off for digits).

`PendingSamplesDataModule` is the ``predict`` datamodule of resumable, DDP-sharded generation: its items are the
indices ``0..num_samples-1`` whose ``<output_dir>/<index:06d>*.png`` does not exist yet (the diffusion module
writes each PNG atomically, so an existing file is complete); under DDP Lightning shards them across ranks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision import transforms as T

from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.images import IndexDataset
from datamodules.loaders import eval_dataloader
from datamodules.rotated_digits import upsampled_digits

GENERATED_LAYOUT = (
    "a flat folder of PNGs <generated_root>/000000.png, 000001.png, ... written by the unconditional diffusion "
    "model: python cli.py predict -c <diffusion config> --ckpt_path <ckpt> "
    "--model.init_args.output_dir <generated_root> (see docs/ppap.md)"
)
IMAGEFOLDER_LAYOUT = (
    "ImageNet: <root>/train/<wnid>/*.JPEG and <root>/val/<wnid>/*.JPEG (val sorted into wnid folders, e.g. with "
    "https://github.com/soumith/imagenetloader.torch's valprep.sh); get it from https://image-net.org"
)


def load_image(path: Path, channels: int) -> Image.Image:
    """Open an image as RGB (3 channels) or grayscale (1); a decoding failure names the file."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("L" if channels == 1 else "RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise CorruptImageError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e


class GeneratedImages(Dataset):
    """``(transform(image), -1)`` over the PNGs of a flat folder."""

    def __init__(self, files: list[Path], transform: Callable, channels: int) -> None:
        self.files, self.transform, self.channels = files, transform, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_image(self.files[index], self.channels)), -1


class CachedImages(Dataset):
    """The images of ``dataset`` decoded once (deterministic transform) and kept in memory, optionally flipped."""

    def __init__(self, dataset: GeneratedImages, flip: bool) -> None:
        plain = GeneratedImages(dataset.files, self._plain(dataset.transform), dataset.channels)
        self.images = torch.stack([plain[i][0] for i in range(len(plain))])
        self.flip = flip

    @staticmethod
    def _plain(transform: T.Compose) -> T.Compose:
        return T.Compose([s for s in transform.transforms if not isinstance(s, T.RandomHorizontalFlip)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.flip and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image, -1


def generated_files(root: str | None) -> list[Path]:
    """The sorted PNGs directly in ``root``; one clear error when the folder is missing or empty."""
    if root is None or not Path(root).is_dir():
        raise DataLayoutError(f"generated image folder {root!r} does not exist. Expected {GENERATED_LAYOUT}")
    files = sorted(p for p in Path(root).iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise DataLayoutError(f"no PNG images in {root!r}. Expected {GENERATED_LAYOUT}")
    return files


class PPAPDataModule(L.LightningDataModule):
    """Generated (unlabelled) or labelled training images, labelled evaluation images (see the module docstring).

    Args:
        train: ``generated`` or ``labelled``.
        generated_root: folder of generated PNGs (``train: generated``).
        labelled: ``digits`` or ``imagefolder``; labelled_root: the ImageFolder root.
        image_size, channels: images are resized (shorter side) and centre-cropped to ``image_size``.
        flip: random horizontal flips of training images.
        holdout, data_seed: the digits hold-out (as `DigitsDataModule`).
        max_eval_images: evaluate on the first N images of a seeded permutation of the evaluation split.
        cache_generated: decode the generated PNGs once into memory (small sets such as the digits demo; the
            flip is then applied to the cached tensors).
    """

    def __init__(
        self,
        train: str = "generated",
        generated_root: str | None = None,
        labelled: str = "digits",
        labelled_root: str | None = None,
        image_size: int = 8,
        channels: int = 1,
        flip: bool = False,
        holdout: int = 400,
        data_seed: int = 0,
        max_eval_images: int | None = None,
        cache_generated: bool = False,
        batch_size: int = 128,
        eval_batch_size: int = 400,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if train not in ("generated", "labelled"):
            raise ValueError(f"train must be 'generated' or 'labelled', got {train!r}")
        if labelled not in ("digits", "imagefolder"):
            raise ValueError(f"labelled must be 'digits' or 'imagefolder', got {labelled!r}")
        if labelled == "digits" and channels != 1:
            raise ValueError("the digits are single-channel: set channels: 1")
        self.train_source, self.generated_root, self.labelled, self.labelled_root = (
            train,
            generated_root,
            labelled,
            labelled_root,
        )
        self.image_size, self.channels, self.flip = int(image_size), int(channels), flip
        self.holdout, self.data_seed, self.max_eval_images = holdout, data_seed, max_eval_images
        self.cache_generated = cache_generated
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers

    def _transform(self, train: bool) -> Callable:
        steps = [T.Resize(self.image_size, antialias=True), T.CenterCrop(self.image_size)]
        if train and self.flip:
            steps.append(T.RandomHorizontalFlip())
        c = self.channels
        return T.Compose([*steps, T.ToTensor(), T.Normalize((0.5,) * c, (0.5,) * c)])

    def _labelled_sets(self) -> tuple[Dataset, Dataset]:
        if self.labelled == "digits":
            images, labels = upsampled_digits(self.image_size)
            order = torch.randperm(
                len(labels), generator=torch.Generator().manual_seed(self.data_seed)
            ).tolist()
            dataset = torch.utils.data.TensorDataset(images * 2 - 1, labels)
            train_set = Subset(dataset, order[self.holdout :])
            if self.train_source == "labelled" and self.flip:
                raise ValueError("flip is not supported for the digits (they are not mirror-symmetric)")
            return train_set, Subset(dataset, order[: self.holdout])
        root = Path(self.labelled_root or "")
        for split in ("train", "val"):
            if not (root / split).is_dir():
                raise DataLayoutError(f"{str(root / split)!r} does not exist. Expected {IMAGEFOLDER_LAYOUT}")
        loader = lambda path: load_image(Path(path), self.channels)  # noqa: E731
        try:
            train_set = datasets.ImageFolder(str(root / "train"), self._transform(True), loader=loader)
            val_set = datasets.ImageFolder(str(root / "val"), self._transform(False), loader=loader)
        except FileNotFoundError as e:
            raise DataLayoutError(f"{e}. Expected {IMAGEFOLDER_LAYOUT}") from e
        if train_set.classes != val_set.classes:
            raise DataLayoutError(f"train and val of {str(root)!r} have different class folders")
        return train_set, val_set

    def setup(self, stage: str | None = None) -> None:
        labelled_train, self.eval_set = self._labelled_sets()
        if self.max_eval_images is not None:
            order = torch.randperm(
                len(self.eval_set), generator=torch.Generator().manual_seed(self.data_seed)
            )
            self.eval_set = Subset(self.eval_set, order[: self.max_eval_images].tolist())
        if stage in ("fit", None):
            if self.train_source == "generated":
                files = generated_files(self.generated_root)
                self.train_set = GeneratedImages(files, self._transform(True), self.channels)
                if self.cache_generated:
                    self.train_set = CachedImages(self.train_set, self.flip)
            else:
                self.train_set = labelled_train
            if len(self.train_set) < self.batch_size:
                raise DataLayoutError(
                    f"{len(self.train_set)} training images, fewer than batch_size {self.batch_size}"
                )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.eval_set, self.eval_batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.eval_set, self.eval_batch_size, self.num_workers)


_INDEX = re.compile(r"^(\d+)")


def existing_indices(output_dir: str | Path) -> set[int]:
    """Sample indices that already have a PNG ``<index>*.png`` in ``output_dir``."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return set()
    return {int(m.group(1)) for p in folder.glob("*.png") if (m := _INDEX.match(p.name))}


class PendingSamplesDataModule(L.LightningDataModule):
    """``predict`` over the sample indices in ``0..num_samples-1`` without a PNG in ``output_dir`` yet.

    Rerunning the same command after an interruption generates only what is missing (the diffusion module seeds
    sample i's noise by i, so the result is the same as one uninterrupted run).
    """

    def __init__(self, output_dir: str, num_samples: int = 2000, batch_size: int = 250) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.output_dir, self.num_samples, self.batch_size = output_dir, int(num_samples), int(batch_size)

    def pending(self) -> list[int]:
        done = existing_indices(self.output_dir)
        return [i for i in range(self.num_samples) if i not in done]

    def predict_dataloader(self) -> DataLoader:
        todo = self.pending()
        return DataLoader(Subset(IndexDataset(self.num_samples), todo), batch_size=self.batch_size)
