"""DomainBed image datasets (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet) from the official layout.

Layout: ``<root>/<FOLDER>/<domain>/<class>/<image>``, as written by DomainBed's
``domainbed/scripts/download.py``. Each domain is read like a torchvision ``ImageFolder`` (classes are
the sorted sub-folders, files in ``ImageFolder`` order), so the seeded splits match DomainBed's.
Domain names, class counts and image shapes come from a static table so they are known before
``setup()``. Layout problems raise :class:`~datamodules.errors.DataLayoutError` early, in ``setup()``,
with a message saying what is missing and how to get the data. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.multidomain import DomainSpec, MultiDomainDataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_HINT = (
    "Get the data with DomainBed's downloader (https://github.com/facebookresearch/DomainBed, "
    "`python -m domainbed.scripts.download --data_dir <root>`, script domainbed/scripts/download.py) "
    "and pass that <root> as `root`. This data module never downloads anything."
)


@dataclass(frozen=True)
class DomainBedDataset:
    """One row of the static dataset table (domains sorted as DomainBed sorts the folders)."""

    folder: str
    domains: tuple[str, ...]
    num_classes: int


DATASETS: dict[str, DomainBedDataset] = {
    "PACS": DomainBedDataset("PACS", ("art_painting", "cartoon", "photo", "sketch"), 7),
    "VLCS": DomainBedDataset("VLCS", ("Caltech101", "LabelMe", "SUN09", "VOC2007"), 5),
    "OfficeHome": DomainBedDataset("office_home", ("Art", "Clipart", "Product", "Real World"), 65),
    "TerraIncognita": DomainBedDataset(
        "terra_incognita", ("location_100", "location_38", "location_43", "location_46"), 10
    ),
    "DomainNet": DomainBedDataset(
        "domain_net", ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"), 345
    ),
}


def train_transform(image_size: int) -> Callable:
    """DomainBed/SWAD training augmentation (ImageNet normalisation)."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.7, 1.0)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.3, 0.3, 0.3, 0.3),
            T.RandomGrayscale(p=0.1),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def eval_transform(image_size: int) -> Callable:
    """DomainBed/SWAD evaluation transform: plain resize, no augmentation."""
    return T.Compose(
        [T.Resize((image_size, image_size)), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; any decoding failure raises :class:`CorruptImageError` naming the file."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise CorruptImageError(f"cannot read image file {path}: {type(e).__name__}: {e}") from e


def verify_image(path: str) -> None:
    """Cheap integrity check of one file (PIL ``verify``); raises :class:`CorruptImageError`."""
    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as e:
        raise CorruptImageError(
            f"corrupt or unreadable image {path}: {type(e).__name__}: {e} (found by verify_images=True)"
        ) from e


class ImageListDataset(Dataset):
    """``(transform(image), label)`` over a list of ``(path, label)`` samples."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable) -> None:
        self.samples = list(samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


def _subdirs(path: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(path) if e.is_dir())


class DomainBedDataModule(MultiDomainDataModule):
    """A DomainBed dataset read from ``<root>/<FOLDER>/<domain>/<class>/<image>``.

    Args:
        root: directory holding the dataset folders (DomainBed's ``--data_dir``).
        dataset: one of ``PACS``, ``VLCS``, ``OfficeHome``, ``TerraIncognita``, ``DomainNet``.
        image_size: side of the square input images.
        augment: use the DomainBed training augmentation; if False, train with the eval transform.
        verify_images: PIL-verify every file during ``setup()`` (slow on big datasets) and report the
            first bad one; without it a bad file fails when loaded, naming the file.
        The remaining arguments are those of :class:`MultiDomainDataModule`.
    """

    def __init__(
        self,
        root: str,
        dataset: str = "PACS",
        image_size: int = 224,
        augment: bool = True,
        verify_images: bool = False,
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
        if dataset not in DATASETS:
            raise ValueError(f"unknown DomainBed dataset {dataset!r}; valid keys: {', '.join(DATASETS)}")
        if int(image_size) != image_size or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        info = DATASETS[dataset]
        spec = DomainSpec(dataset, info.domains, info.num_classes, (3, int(image_size), int(image_size)))
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
        self.root = str(root)
        self.dataset = dataset
        self.image_size = int(image_size)
        self.augment = bool(augment)
        self.verify_images = bool(verify_images)
        self.class_names: list[str] | None = None
        self._samples: list[list[tuple[str, int]]] = []

    @property
    def data_dir(self) -> Path:
        """``<root>/<FOLDER>`` of the selected dataset."""
        return Path(self.root).expanduser() / DATASETS[self.dataset].folder

    def _layout_error(self, problem: str) -> DataLayoutError:
        info = DATASETS[self.dataset]
        tree = "\n".join(f"    {d}/<class>/<image>" for d in info.domains)
        return DataLayoutError(
            f"{self.dataset}: {problem}\n"
            f"Expected layout ({info.num_classes} class folders per domain, the same in every domain):\n"
            f"  {Path(self.root).expanduser() / info.folder}/\n{tree}\n{DOWNLOAD_HINT}"
        )

    def _load_domains(self) -> list[int]:
        info = DATASETS[self.dataset]
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise self._layout_error(f"data root {root} does not exist or is not a directory.")
        base = self.data_dir
        if not base.is_dir():
            found = _subdirs(root)
            raise self._layout_error(
                f"dataset folder {base} not found (folders in {root}: {found or 'none'})."
            )
        found = _subdirs(base)
        missing = [d for d in info.domains if d not in found]
        if missing:
            raise self._layout_error(
                f"domain folder(s) {missing} missing in {base} (found: {found or 'none'})."
            )
        extra = [d for d in found if d not in info.domains and not d.startswith(".")]
        if extra:
            warnings.warn(
                f"{self.dataset}: ignoring unexpected folders {extra} in {base}", RuntimeWarning, stacklevel=2
            )

        classes = {d: _subdirs(base / d) for d in info.domains}
        for d, names in classes.items():
            if not names:
                raise self._layout_error(f"domain {d!r} ({base / d}) has no class folders.")
        reference, _ = Counter(tuple(c) for c in classes.values()).most_common(1)[0]
        problems = []
        for d, names in classes.items():
            if tuple(names) != reference:
                lacking = sorted(set(reference) - set(names))
                surplus = sorted(set(names) - set(reference))
                problems.append(f"domain {d!r} is missing classes {lacking} and has extra classes {surplus}")
        if problems:
            raise self._layout_error(
                "class folders differ between domains (compared with the majority set "
                f"{list(reference)}): " + "; ".join(problems) + "."
            )
        if len(reference) != info.num_classes:
            raise self._layout_error(
                f"found {len(reference)} class folders per domain ({list(reference)[:10]}"
                f"{' ...' if len(reference) > 10 else ''}), expected {info.num_classes}."
            )

        class_to_idx = {c: i for i, c in enumerate(reference)}
        self._samples = []
        for d in info.domains:
            samples = make_dataset(str(base / d), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
            counts = Counter(label for _, label in samples)
            empty = [c for c, i in class_to_idx.items() if counts[i] == 0]
            if empty:
                raise self._layout_error(
                    f"domain {d!r} has no images (extensions {', '.join(IMG_EXTENSIONS)}) "
                    f"in class folder(s) {empty}."
                )
            self._samples.append(samples)
        if self.verify_images:
            for samples in self._samples:
                for path, _ in samples:
                    verify_image(path)
        self.class_names = list(reference)
        return [len(s) for s in self._samples]

    def _domain_dataset(self, domain: int, indices: list[int], train: bool) -> Dataset:
        if train and self.augment:
            transform = train_transform(self.image_size)
        else:
            transform = eval_transform(self.image_size)
        samples = self._samples[domain]
        return ImageListDataset([samples[i] for i in indices], transform)
