"""SSL datamodules: multi-view training batches, `[bank, queries]` evaluation loaders, device-side normalisation.

Training batches are dicts: `views` (list of normalised (B, C, H, W) tensors), `raw_views` (the same views in
[0, 1], for callbacks such as ScoreCL), `labels` (used only by the online probe), and `clean` (the un-augmented
image in [0, 1]) when `clean_view: true`. Validation and test loaders are `[bank, queries]`: the labelled training
set without augmentation (the k-NN bank) and the evaluation set, batches `(x, y)` normalised.
`clean_train_dataloader()` gives un-augmented training images in [0, 1] (ScoreCL's score-network pretraining).
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.loaders import eval_dataloader
from datamodules.ssl.augment import RECIPES, DigitsStrengthAugment, eval_transform, view_transform
from datamodules.ssl.datasets import (
    ArrayImages,
    MultiView,
    TensorImages,
    digits_split,
    imagenet100_split,
    read_cifar,
)

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class SSLDataModule(L.LightningDataModule):
    """Common part: loaders, normalisation, views. Subclasses set metadata and implement `_load()`.

    Args:
        recipe: augmentation recipe name (`simclr`, `simsiam`, `vicreg`, `wmse`; digits: `digits`).
        augment: overrides of the recipe's arguments (see `augment.view_transform`).
        num_views: views per image (2 for every method here).
        clean_view: also return the un-augmented image (ScoreCL `reference: original`).
        batch_size: per-process training batch; eval_batch_size: per-process eval batch.
        drop_last: drop the last incomplete training batch (W-MSE needs full batches).
    """

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __init__(
        self,
        recipe: str = "simclr",
        augment: dict | None = None,
        num_views: int = 2,
        clean_view: bool = False,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 4,
        pin_memory: bool = False,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        self.recipe, self.augment = recipe, dict(augment or {})
        self.num_views, self.clean_view = int(num_views), bool(clean_view)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.pin_memory, self.drop_last = (
            int(num_workers),
            bool(pin_memory),
            bool(drop_last),
        )
        self.train_set: Dataset | None = None
        self.bank_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.clean_set: Dataset | None = None

    # -- subclass interface
    def _load(self) -> None:
        """Set `train_set` (MultiView), `bank_set` / `test_set` / `clean_set` (un-augmented `(x, y)`)."""
        raise NotImplementedError

    def _recipe_kwargs(self) -> dict:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown augmentation recipe {self.recipe!r}; choose one of {sorted(RECIPES)}")
        return {**RECIPES[self.recipe], **self.augment}

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is None:
            self._load()

    # -- loaders
    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.train_set) < self.batch_size and self.drop_last:
            raise ValueError(
                f"training set ({len(self.train_set)}) smaller than batch_size={self.batch_size}"
            )
        return self._loader(self.train_set, self.batch_size, True, self.drop_last)

    def val_dataloader(self) -> list[DataLoader]:
        """[k-NN bank, queries]; under DDP each sample goes to exactly one rank (no padding duplicates)."""
        return [
            eval_dataloader(self.bank_set, self.eval_batch_size, self.num_workers, self.pin_memory),
            eval_dataloader(self.test_set, self.eval_batch_size, self.num_workers, self.pin_memory),
        ]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, False)

    def clean_train_dataloader(
        self, batch_size: int = 128, shuffle: bool = True, seed: int = 0
    ) -> DataLoader:
        """Un-augmented training images `(x in [0, 1], y)`, not normalised (no trainer hook applies)."""
        if self.clean_set is None:
            self.setup("fit")
        g = torch.Generator().manual_seed(seed)
        return DataLoader(self.clean_set, batch_size=batch_size, shuffle=shuffle, generator=g, drop_last=True)

    # -- device-side normalisation, keeping the raw views
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and "views" in batch:
            raw = list(batch["views"])
            return {**batch, "raw_views": raw, "views": [self.normalize(v) for v in raw]}
        if isinstance(batch, (list, tuple)) and len(batch) == 2:
            return (self.normalize(batch[0]), batch[1])
        if torch.is_tensor(batch):
            return self.normalize(batch)
        return batch


class CIFARDataModule(SSLDataModule):
    """CIFAR-10 / CIFAR-100 from the python-pickle release under `root` (see `datasets.read_cifar`).

    `download: true` lets torchvision fetch and unpack the release into `root` first (off by default).
    """

    mean, std = CIFAR_MEAN, CIFAR_STD

    def __init__(
        self, root: str = "data", dataset: str = "cifar10", download: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if dataset not in ("cifar10", "cifar100"):
            raise ValueError(f"dataset must be cifar10 or cifar100, got {dataset!r}")
        self.root, self.dataset, self.download = root, dataset, download
        self.num_classes = 10 if dataset == "cifar10" else 100
        self.input_shape = (3, 32, 32)

    def prepare_data(self) -> None:
        if self.download:
            from torchvision.datasets import CIFAR10, CIFAR100

            (CIFAR10 if self.dataset == "cifar10" else CIFAR100)(self.root, download=True)

    def _load(self) -> None:
        train_x, train_y = read_cifar(self.root, self.dataset, train=True)
        test_x, test_y = read_cifar(self.root, self.dataset, train=False)
        plain = eval_transform(32)
        clean = plain if self.clean_view else None
        self.train_set = MultiView(
            ArrayImages(train_x, train_y), view_transform(32, **self._recipe_kwargs()), self.num_views, clean
        )
        self.bank_set = ArrayImages(train_x, train_y, plain)
        self.clean_set = self.bank_set
        self.test_set = ArrayImages(test_x, test_y, plain)


class ImageNet100DataModule(SSLDataModule):
    """ImageNet-100: `<root>/{train,val}/<wnid>/*` over `class_list` (default: the shipped CMC list).

    Training views are RandomResizedCrop(`image_size`) + the recipe; evaluation resizes to `resize` and
    centre-crops `image_size`.
    """

    def __init__(
        self,
        root: str = "data/imagenet100",
        class_list: str | None = None,
        image_size: int = 224,
        resize: int = 256,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.class_list, self.image_size, self.resize = (
            root,
            class_list,
            int(image_size),
            int(resize),
        )
        self.num_classes = 100 if class_list is None else None
        self.input_shape = (3, self.image_size, self.image_size)
        if self.num_classes is None:
            from datamodules.ssl.datasets import read_class_list

            self.num_classes = len(read_class_list(class_list))

    def _load(self) -> None:
        plain = eval_transform(self.image_size, self.resize)
        train_plain = imagenet100_split(self.root, "train", self.class_list, plain)
        self.test_set = imagenet100_split(self.root, "val", self.class_list, plain)
        views = imagenet100_split(self.root, "train", self.class_list, None)
        self.train_set = MultiView(
            views,
            view_transform(self.image_size, **self._recipe_kwargs()),
            self.num_views,
            plain if self.clean_view else None,
        )
        self.bank_set = self.clean_set = train_plain


class DigitsDataModule(SSLDataModule):
    """scikit-learn's bundled digits (8x8, one channel): `n_train` training images, the rest (597) for test.

    Views use `DigitsStrengthAugment` (recipe `digits`; `augment` overrides its arguments).
    """

    mean, std = DIGITS_MEAN, DIGITS_STD

    def __init__(self, n_train: int = 1200, data_seed: int = 0, recipe: str = "digits", **kwargs) -> None:
        kwargs.setdefault("num_workers", 0)
        super().__init__(recipe=recipe, **kwargs)
        self.n_train, self.data_seed = int(n_train), int(data_seed)
        self.num_classes = 10
        self.input_shape = (1, 8, 8)

    def _recipe_kwargs(self) -> dict:
        if self.recipe != "digits":
            raise ValueError(f"DigitsDataModule uses recipe 'digits', got {self.recipe!r}")
        return dict(self.augment)

    def _load(self) -> None:
        split = digits_split(self.n_train, self.data_seed)
        self.train_set = MultiView(
            TensorImages(*split["train"]),
            DigitsStrengthAugment(**self._recipe_kwargs()),
            self.num_views,
            _identity if self.clean_view else None,
        )
        self.bank_set = self.clean_set = TensorImages(*split["train"])
        self.test_set = TensorImages(*split["test"])
