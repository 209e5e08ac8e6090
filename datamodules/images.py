"""Unconditional image data for diffusion models: face folders (FFHQ, CelebA-HQ) and the bundled digits.

Every training/evaluation item is ``(image, label)`` with the image in [-1, 1] (label 0 for unlabelled folders),
so classifiers can use the same data. `predict` iterates over sample indices ``0..predict_samples-1`` (the
diffusion module generates sample i from noise seeded by i, and writes ``<i>.png``).

Layouts (nothing is downloaded):
- FFHQ: ``<root>/images1024x1024/00000/00000.png ... 69000/69999.png`` (NVlabs/ffhq-dataset), or a folder of
  PNGs at any depth (e.g. a 256-px copy); files are taken in sorted order and resized.
- CelebA-HQ: ``<root>/CelebA-HQ-img/0.jpg ... 29999.jpg`` (CelebAMask-HQ), or a folder of images.
- Optional split lists (one relative path or file name per line, e.g. CompVis/latent-diffusion's
  ``ffhqtrain.txt`` / ``ffhqvalidation.txt``): ``train_list`` restricts training, ``eval_list`` picks the
  validation/test (FID reference) images; without ``eval_list`` evaluation uses ``num_eval_images`` images of a
  seeded permutation of the training images (generative models are compared with their training set).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from datamodules.domainbed import load_rgb
from datamodules.errors import DataLayoutError
from datamodules.loaders import eval_dataloader
from datamodules.rotated_digits import upsampled_digits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LAYOUTS = {
    "ffhq": (
        "images1024x1024",
        "FFHQ: <root>/images1024x1024/00000/00000.png ... (or any folder of PNGs); get it "
        "from https://github.com/NVlabs/ffhq-dataset (python download_ffhq.py --images)",
    ),
    "celebahq": (
        "CelebA-HQ-img",
        "CelebA-HQ: <root>/CelebA-HQ-img/0.jpg ... 29999.jpg; get CelebAMask-HQ from "
        "https://github.com/switchablenorms/CelebAMask-HQ",
    ),
    "folder": (None, "a folder of images (.png/.jpg/.jpeg/.webp/.bmp) at any depth"),
}


class IndexDataset(Dataset):
    """Items are the indices ``0..n-1`` (what `predict` generates)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.tensor(index)


class ImageFiles(Dataset):
    """``(transform(image), 0)`` over a list of files."""

    def __init__(self, files: list[Path], transform: Callable) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(str(self.files[index]))), 0


class _UnconditionalImages(L.LightningDataModule):
    """Loaders shared by the image data modules (train shuffled; eval and predict in order)."""

    train_set: Dataset
    eval_set: Dataset

    def __init__(
        self,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        predict_samples: int,
        predict_batch_size: int,
    ) -> None:
        super().__init__()
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.predict_samples, self.predict_batch_size = predict_samples, predict_batch_size

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size:
            raise DataLayoutError(
                f"{len(self.train_set)} training images, fewer than batch_size {self.batch_size}"
            )
        return self._loader(self.train_set, self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        # every held-out image on exactly one rank under DDP (no padding duplicates in losses or FID statistics)
        return eval_dataloader(self.eval_set, self.eval_batch_size, self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.eval_set, self.eval_batch_size, self.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(IndexDataset(self.predict_samples), batch_size=self.predict_batch_size)


def find_images(root: Path, dataset: str) -> list[Path]:
    """Sorted image files of ``dataset`` under ``root``; a clear `DataLayoutError` if there are none."""
    sub, layout = LAYOUTS[dataset]
    if not root.is_dir():
        raise DataLayoutError(f"dataset root {str(root)!r} does not exist. Expected layout: {layout}")
    base = root / sub if sub and (root / sub).is_dir() else root
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataLayoutError(f"no images found under {str(base)!r}. Expected layout: {layout}")
    return files


def _read_list(path: str, files: list[Path], root: Path) -> list[Path]:
    """Files named in a split list (relative paths or bare file names), in the list's order."""
    if not Path(path).is_file():
        raise DataLayoutError(f"split list {path!r} does not exist")
    by_rel = {str(p.relative_to(root)): p for p in files}
    by_name = {p.name: p for p in files}
    out = []
    for line in Path(path).read_text().split():
        found = by_rel.get(line) or by_name.get(Path(line).name)
        if found is None:
            raise DataLayoutError(f"{path!r} lists {line!r}, which is not an image under {str(root)!r}")
        out.append(found)
    if not out:
        raise DataLayoutError(f"split list {path!r} is empty")
    return out


class ImageFolderDataModule(_UnconditionalImages):
    """FFHQ / CelebA-HQ / any image folder, resized (and centre-cropped) to ``image_size``, in [-1, 1].

    Args:
        root: dataset root (see the module docstring for the layouts).
        dataset: ``ffhq``, ``celebahq`` or ``folder``.
        image_size: side of the square images.
        flip: random horizontal flips for training (ADM / LDM do).
        train_list, eval_list: optional split files.
        num_eval_images: evaluation images when there is no ``eval_list`` (seeded by ``data_seed``).
    """

    def __init__(
        self,
        root: str,
        dataset: str = "ffhq",
        image_size: int = 256,
        flip: bool = True,
        train_list: str | None = None,
        eval_list: str | None = None,
        num_eval_images: int = 10_000,
        data_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 4,
        predict_samples: int = 64,
        predict_batch_size: int = 64,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, predict_samples, predict_batch_size)
        if dataset not in LAYOUTS:
            raise ValueError(f"dataset must be one of {sorted(LAYOUTS)}, got {dataset!r}")
        self.root, self.dataset, self.image_size, self.flip = Path(root), dataset, int(image_size), flip
        self.train_list, self.eval_list = train_list, eval_list
        self.num_eval_images, self.data_seed = num_eval_images, data_seed
        self.input_shape = (3, self.image_size, self.image_size)

    def _transform(self, train: bool) -> Callable:
        steps = [T.Resize(self.image_size, antialias=True), T.CenterCrop(self.image_size)]
        if train and self.flip:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose([*steps, T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])

    def setup(self, stage: str | None = None) -> None:
        files = find_images(self.root, self.dataset)
        train = _read_list(self.train_list, files, self.root) if self.train_list else files
        if self.eval_list:
            evaluation = _read_list(self.eval_list, files, self.root)
        else:
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.data_seed))
            evaluation = [train[i] for i in order[: self.num_eval_images].tolist()]
        self.train_set = ImageFiles(train, self._transform(train=True))
        self.eval_set = ImageFiles(evaluation, self._transform(train=False))


class DigitsDataModule(_UnconditionalImages):
    """scikit-learn's bundled 8x8 digits (1,797 images, no download) in [-1, 1], single channel.

    A seeded hold-out of ``holdout`` images is the validation/test set (the FID reference); the rest trains.
    ``image_size`` > 8 upsamples bilinearly. Items are ``(image, label)`` (10 classes). There is deliberately no
    ``num_classes`` attribute: the CLI would link it into the (unconditional) diffusion model's saved
    hyperparameters, and `predict --ckpt_path` then fails; classifier configs set ``num_classes: 10`` themselves.
    """

    def __init__(
        self,
        image_size: int = 8,
        holdout: int = 400,
        data_seed: int = 0,
        batch_size: int = 100,
        eval_batch_size: int = 400,
        num_workers: int = 0,
        predict_samples: int = 64,
        predict_batch_size: int = 64,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, num_workers, predict_samples, predict_batch_size)
        self.image_size, self.holdout, self.data_seed = int(image_size), int(holdout), int(data_seed)
        self.input_shape = (1, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        images, labels = upsampled_digits(self.image_size)
        images = images * 2 - 1
        if not 0 < self.holdout < len(labels):
            raise ValueError(f"holdout must be in (0, {len(labels)}), got {self.holdout}")
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.data_seed)).tolist()
        dataset = torch.utils.data.TensorDataset(images, labels)
        self.eval_set = Subset(dataset, order[: self.holdout])
        self.train_set = Subset(dataset, order[self.holdout :])
