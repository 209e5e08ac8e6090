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

`GuidedSamplesDataModule` is the ``test`` datamodule of `lightning_modules.ppap.evaluate.GuidedSampleEvaluator`:
the guided samples ``<samples_root>/<i:06d>_y<class>.png`` written by ``cli.py predict -c
configs/ppap/*_sample.yaml`` and real images (the held-out digits, or a flat folder or ImageFolder layout), as uint8
tensors with their class and source (0 = sample, 1 = real).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision import transforms as T

from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.images import IndexDataset
from datamodules.loaders import eval_dataloader
from datamodules.rotated_digits import upsampled_digits

GENERATED_LAYOUT = (
    "PNGs <generated_root>/000000.png, 000001.png, ... or in shard folders <generated_root>/0000/000000.png, ... "
    "(one level deep) written by the unconditional diffusion model: python cli.py predict -c <diffusion config> "
    "--ckpt_path <ckpt> --model.init_args.output_dir <generated_root> (see docs/ppap.md)"
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
    """The sorted PNGs in ``root`` and its shard folders (one level); one clear error when missing or empty."""
    if root is None or not Path(root).is_dir():
        raise DataLayoutError(f"generated image folder {root!r} does not exist. Expected {GENERATED_LAYOUT}")
    top = list(Path(root).iterdir())
    entries = top + [p for d in top if d.is_dir() for p in d.iterdir()]
    files = sorted(p for p in entries if p.suffix.lower() == ".png" and p.is_file())
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

    def _labelled_sets(self) -> tuple[Dataset | None, Dataset]:
        """(labelled train set, evaluation set); the ImageFolder train split is only read when training on it
        (ImageNet's 1.28M training files need not exist, nor be listed, for PPAP's generated-data runs)."""
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
        splits = ("train", "val") if self.train_source == "labelled" else ("val",)
        for split in splits:
            if not (root / split).is_dir():
                raise DataLayoutError(f"{str(root / split)!r} does not exist. Expected {IMAGEFOLDER_LAYOUT}")
        loader = lambda path: load_image(Path(path), self.channels)  # noqa: E731
        try:
            val_set = datasets.ImageFolder(str(root / "val"), self._transform(False), loader=loader)
            if self.train_source != "labelled":
                return None, val_set
            train_set = datasets.ImageFolder(str(root / "train"), self._transform(True), loader=loader)
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
    """Sample indices that already have a PNG ``<index>*.png`` in ``output_dir`` or its shard folders."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return set()
    files = [*folder.glob("*.png"), *folder.glob("*/*.png")]
    return {int(m.group(1)) for p in files if (m := _INDEX.match(p.name))}


class PendingSamplesDataModule(L.LightningDataModule):
    """``predict`` over the sample indices in ``0..num_samples-1`` without a PNG in the output folder yet.

    Rerunning the same command after an interruption generates only what is missing (the diffusion module seeds
    sample i's noise by i, so the result is the same as one uninterrupted run).

    Args:
        output_dir: the folder to check; None (the configs' choice) reads the model's own ``sample_dir()``, so a
            command-line change of the model's output folder cannot leave the two apart. When both are set they
            must agree (otherwise a rerun would regenerate, or skip, the wrong samples).
        num_samples, batch_size: how many samples in all, and per predict batch.
    """

    def __init__(self, output_dir: str | None = None, num_samples: int = 2000, batch_size: int = 250) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.output_dir, self.num_samples, self.batch_size = output_dir, int(num_samples), int(batch_size)

    def folder(self) -> Path:
        """The output folder: ``output_dir``, or the model's ``sample_dir()``; an error when they disagree."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        model_dir = model.sample_dir() if model is not None and hasattr(model, "sample_dir") else None
        if self.output_dir is None:
            if model_dir is None:
                raise ValueError("PendingSamplesDataModule needs output_dir, or a model with sample_dir()")
            return Path(model_dir)
        if model_dir is not None and Path(model_dir).resolve() != Path(self.output_dir).resolve():
            raise ValueError(
                f"data output_dir {self.output_dir!r} differs from the model's output folder {str(model_dir)!r}: "
                "samples would be written to one and looked for in the other. Set only the model's output_dir "
                "(the data module then follows it)."
            )
        return Path(self.output_dir)

    def pending(self) -> list[int]:
        done = existing_indices(self.folder())
        return [i for i in range(self.num_samples) if i not in done]

    def predict_dataloader(self) -> DataLoader:
        todo = self.pending()
        if self.trainer is not None and self.trainer.world_size > 1:
            # rank 0's list for every rank: a rank that lists the folder after another has begun writing would
            # otherwise shard a different list, and some samples would be left for the next run
            todo = self.trainer.strategy.broadcast(todo, src=0)
        return DataLoader(Subset(IndexDataset(self.num_samples), todo), batch_size=self.batch_size)


SAMPLE_NAME = re.compile(r"^\d+_y(\d+)\.png$")
SAMPLES_LAYOUT = (
    "a flat folder of guided samples <samples_root>/000000_y3.png, 000001_y7.png, ... (<index>_y<target class>.png) "
    "written by python cli.py predict -c configs/ppap/<setup>_sample.yaml (see docs/ppap.md)"
)
REAL_LAYOUT = (
    "real images as a flat folder <real_root>/*.{png,jpg,jpeg} (no labels) or an ImageFolder layout "
    "<real_root>/<class>/*.{png,jpg,jpeg} (class index = sorted folder name, e.g. ImageNet's val/<wnid>/)"
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SAMPLE, REAL = 0, 1


def guided_sample_files(root: str | None, num_classes: int) -> tuple[list[Path], list[int]]:
    """The guided samples of ``root`` (sorted) and their target classes, parsed from ``<i>_y<class>.png``.

    Every PNG directly in ``root`` must follow that pattern with a class below ``num_classes`` (other files, such as
    the ``.<i>.png.tmp`` of an interrupted write, are ignored); one clear error otherwise.
    """
    if root is None or not Path(root).is_dir():
        raise DataLayoutError(f"guided sample folder {root!r} does not exist. Expected {SAMPLES_LAYOUT}")
    files = sorted(p for p in Path(root).iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise DataLayoutError(f"no PNG images in {root!r}. Expected {SAMPLES_LAYOUT}")
    labels = []
    for f in files:
        match = SAMPLE_NAME.match(f.name)
        if match is None:
            raise DataLayoutError(
                f"guided sample {str(f)!r} has no target class in its name. Expected {SAMPLES_LAYOUT}"
            )
        label = int(match.group(1))
        if label >= num_classes:
            raise DataLayoutError(
                f"guided sample {str(f)!r} has target class {label}, but num_classes is {num_classes}"
            )
        labels.append(label)
    return files, labels


def real_image_files(root: str | None) -> tuple[list[Path], list[int]]:
    """The real images of ``root`` and their classes: a flat folder (class -1) or an ImageFolder layout."""
    folder = Path(root or "")
    if root is None or not folder.is_dir():
        raise DataLayoutError(f"real image folder {root!r} does not exist. Expected {REAL_LAYOUT}")

    def images_in(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())

    flat = images_in(folder)
    if flat:
        return flat, [-1] * len(flat)
    classes = sorted(d for d in folder.iterdir() if d.is_dir())
    files, labels = [], []
    for index, d in enumerate(classes):
        found = images_in(d)
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataLayoutError(f"no images in {root!r}. Expected {REAL_LAYOUT}")
    return files, labels


class UInt8Images(Dataset):
    """``(uint8 image (C, S, S), label, source)`` over image files, resized or checked to one size."""

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        source: int,
        channels: int,
        image_size: int | None,
        size: tuple,
    ) -> None:
        self.files, self.labels, self.source, self.channels = files, labels, source, channels
        self.image_size, self.size = image_size, size  # size: (width, height) every image must have

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = load_image(self.files[index], self.channels)
        if self.image_size is not None:
            image = T.CenterCrop(self.image_size)(
                T.Resize(self.image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True)(image)
            )
        elif image.size != self.size:
            raise DataLayoutError(
                f"image {str(self.files[index])!r} is {image.size[0]}x{image.size[1]}, but the guided samples are "
                f"{self.size[0]}x{self.size[1]}: give real images of the samples' size, or set image_size to "
                "resize and centre-crop both"
            )
        return T.functional.pil_to_tensor(image), self.labels[index], self.source


class UInt8Tensors(Dataset):
    """``(uint8 image, label, source)`` over in-memory images in [-1, 1] (the held-out digits)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, source: int) -> None:
        self.images = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # as PNG writers round
        self.labels, self.source = labels, source

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        return self.images[index], int(self.labels[index]), self.source


class GuidedSamplesDataModule(L.LightningDataModule):
    """``test`` data for judging guided samples: the samples and real images, uint8, in one evaluation loader.

    Items are ``(uint8 image (C, S, S), label, source)``: a sample's label is its target class (from the file
    name), a real image's its class (-1 in a flat folder); source is 0 for samples and 1 for real images. Samples
    and real images share one loader (`eval_dataloader`): under DDP every image goes to exactly one rank.

    Args:
        samples_root: the guided samples ``<i:06d>_y<class>.png`` (`lightning_modules.ppap.sampling`).
        num_classes: classes the targets must lie below (linked to the evaluator by the CLI).
        real: ``digits`` (scikit-learn's digits held out as `PPAPDataModule` does: ``holdout``, ``data_seed``) or
            ``folder`` (``real_root``: a flat folder or an ImageFolder layout).
        channels: 1 (grayscale) or 3 (RGB) for every image.
        image_size: resize (shorter side, bicubic) and centre-crop every image, samples and real, to this side;
            None requires every image to have the size of the first sample (``digits`` needs it: the digits are
            upsampled to it).
        max_real_images: use the first N real images of a seeded (``data_seed``) permutation.
    """

    def __init__(
        self,
        samples_root: str,
        num_classes: int = 10,
        real: str = "folder",
        real_root: str | None = None,
        channels: int = 3,
        image_size: int | None = None,
        holdout: int = 400,
        data_seed: int = 0,
        max_real_images: int | None = None,
        batch_size: int = 250,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if real not in ("digits", "folder"):
            raise ValueError(f"real must be 'digits' or 'folder', got {real!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if real == "digits" and (channels != 1 or image_size is None):
            raise ValueError(
                "real: digits needs channels: 1 and image_size (the side the digits are upsampled to)"
            )
        self.samples_root, self.num_classes, self.real, self.real_root = (
            samples_root,
            int(num_classes),
            real,
            real_root,
        )
        self.channels, self.image_size = channels, image_size
        self.holdout, self.data_seed, self.max_real_images = holdout, data_seed, max_real_images
        self.batch_size, self.num_workers = batch_size, num_workers

    def setup(self, stage: str | None = None) -> None:
        files, labels = guided_sample_files(self.samples_root, self.num_classes)
        size = load_image(files[0], self.channels).size
        samples = UInt8Images(files, labels, SAMPLE, self.channels, self.image_size, size)
        if self.real == "digits":
            digits = PPAPDataModule(
                train="labelled",
                labelled="digits",
                image_size=self.image_size,
                holdout=self.holdout,
                data_seed=self.data_seed,
            )
            held_out = digits._labelled_sets()[1]
            images = torch.stack([held_out[i][0] for i in range(len(held_out))])
            targets = torch.tensor([int(held_out[i][1]) for i in range(len(held_out))])
            real: Dataset = UInt8Tensors(images, targets, REAL)
        else:
            real_files, real_labels = real_image_files(self.real_root)
            real = UInt8Images(real_files, real_labels, REAL, self.channels, self.image_size, size)
            if max(real_labels) >= self.num_classes:
                raise DataLayoutError(
                    f"{str(self.real_root)!r} has {max(real_labels) + 1} class folders, more than num_classes "
                    f"{self.num_classes}"
                )
        if self.max_real_images is not None:
            order = torch.randperm(len(real), generator=torch.Generator().manual_seed(self.data_seed))
            real = Subset(real, order[: self.max_real_images].tolist())
        if len(real) < 2:
            raise DataLayoutError(f"{len(real)} real image(s): FID needs at least 2")
        self.num_samples, self.num_real = len(samples), len(real)
        self.test_set = ConcatDataset([samples, real])

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.test_set, self.batch_size, self.num_workers)
