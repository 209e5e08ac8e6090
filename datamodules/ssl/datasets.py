"""Readers for the SSL datasets in their official on-disk layouts, and the multi-view dataset wrapper.

- CIFAR-10 `<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}` and CIFAR-100
  `<root>/cifar-100-python/{train,test}`: pickled dicts with `b'data'` (N x 3072 uint8, channel-major rows) and
  `b'labels'` / `b'fine_labels'`. Read directly (torchvision's classes insist on the release's MD5 sums).
- ImageNet-100: `<root>/{train,val}/<wnid>/*.JPEG` restricted to a class list (the CMC list by default).
- Digits: scikit-learn's bundled 8x8 digits in [0, 1], split with a seed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits
from torch.utils.data import Dataset
from torchvision.datasets import DatasetFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.errors import CorruptImageError, DataLayoutError

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
IMAGENET100_CLASSES = Path(__file__).resolve().parents[1] / "imagenet100_classes.txt"


def read_cifar(root: str | Path, name: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) int64 of a CIFAR split from the python-pickle release."""
    if name not in CIFAR_FILES:
        raise ValueError(f"unknown CIFAR dataset {name!r}; choose one of {sorted(CIFAR_FILES)}")
    folder, train_files, test_files, label_key = CIFAR_FILES[name]
    base = Path(root) / folder
    files = train_files if train else test_files
    missing = [f for f in files if not (base / f).is_file()]
    if missing:
        raise DataLayoutError(
            f"{name}: missing {', '.join(str(base / f) for f in missing)}.\n"
            f"  Expected the python-pickle release unpacked under --data.root: {base}/{{{','.join(files)}}}.\n"
            f"  Get 'CIFAR-{name[5:]} python version' from {CIFAR_URL} and untar it into the root, "
            "or pass --data.init_args.download true to let torchvision fetch it."
        )
    images, labels = [], []
    for f in files:
        try:
            with open(base / f, "rb") as fh:
                entry = pickle.load(fh, encoding="bytes")
            data, lab = entry[b"data"], entry[label_key]
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError) as err:
            raise DataLayoutError(f"{base / f} is not a CIFAR python-pickle batch ({err!r})") from err
        data = np.asarray(data, dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise DataLayoutError(f"{base / f}: expected N x 3072 uint8 rows and N labels, got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(lab, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


class ArrayImages(Dataset):
    """`(transform(PIL image), label)` over an (N, H, W, C) uint8 array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None) -> None:
        if len(images) == 0:
            raise DataLayoutError("empty split: no images")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        return (self.transform(img) if self.transform else img), int(self.labels[index])


class TensorImages(Dataset):
    """`(transform(image tensor), label)` over (N, C, H, W) float tensors in [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None) -> None:
        if len(images) == 0:
            raise DataLayoutError("empty split: no images")
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = self.images[index]
        return (self.transform(img) if self.transform else img), int(self.labels[index])


def read_class_list(path: str | Path) -> list[str]:
    """WordNet ids, one a line ('#' comments and blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataLayoutError(f"class list {path} does not exist")
    wnids = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    wnids = [w for w in wnids if w]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataLayoutError(f"class list {path} is empty or has duplicates")
    return wnids


def _load_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise CorruptImageError(f"cannot decode image {path}: {err}") from err


class ClassListFolder(DatasetFolder):
    """An ImageFolder split restricted to (and ordered by) a class list; every listed class must be present."""

    def __init__(self, split_dir: str | Path, wnids: list[str], transform=None) -> None:
        self.wnids = wnids
        super().__init__(str(split_dir), loader=_load_rgb, extensions=IMG_EXTENSIONS, transform=transform)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        missing = [w for w in self.wnids if not (Path(directory) / w).is_dir()]
        if missing:
            raise DataLayoutError(
                f"{directory}: {len(missing)} of {len(self.wnids)} listed classes missing "
                f"(e.g. {', '.join(missing[:5])}); expected {directory}/<wnid>/*.JPEG for every wnid of the list"
            )
        return list(self.wnids), {w: i for i, w in enumerate(self.wnids)}


def imagenet100_split(
    root: str | Path, split: str, class_list: str | Path | None, transform=None
) -> ClassListFolder:
    """The `train` or `val` split of ImageNet-100 under `root`, with a clear error when it is missing."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DataLayoutError(
            f"ImageNet-100: {split_dir} does not exist.\n"
            f"  Expected an ImageFolder tree <root>/{{train,val}}/<wnid>/*.JPEG over the 100 classes of "
            f"{class_list or IMAGENET100_CLASSES} (the CMC subset of ImageNet-1k; val sorted into wnid folders).\n"
            "  Build it from the ILSVRC-2012 release (image-net.org) by copying those 100 class folders."
        )
    try:
        return ClassListFolder(split_dir, read_class_list(class_list or IMAGENET100_CLASSES), transform)
    except FileNotFoundError as err:  # torchvision: a class folder without images
        raise DataLayoutError(f"ImageNet-100 {split}: {err}") from err


def digits_split(n_train: int = 1200, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's 1,797 digits as (N, 1, 8, 8) floats in [0, 1]; a seeded split into train / test."""
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    if not 0 < n_train < len(labels):
        raise ValueError(f"n_train must be in (0, {len(labels)}), got {n_train}")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    tr, te = order[:n_train], order[n_train:]
    return {"train": (images[tr], labels[tr]), "test": (images[te], labels[te])}


class MultiView(Dataset):
    """Wrap a dataset of `(image, label)`: return `{"views": [t(image) x num_views], "labels": y}` (+ `"clean"`)."""

    def __init__(self, base: Dataset, view_transform, num_views: int = 2, clean_transform=None) -> None:
        if num_views < 2:
            raise ValueError(f"num_views must be >= 2, got {num_views}")
        self.base, self.view_transform, self.num_views = base, view_transform, num_views
        self.clean_transform = clean_transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        image, label = self.base[index]
        item = {"views": [self.view_transform(image) for _ in range(self.num_views)], "labels": label}
        if self.clean_transform is not None:
            item["clean"] = self.clean_transform(image)
        return item
