"""HoughCL / DenseCL pre-training data: two views per image with each view's crop box and flip recorded.

Training batches are dicts: `views` (list of 2 tensors, normalised on the device by `SSLDataModule`),
`raw_views`, `labels`, `boxes` (B, 2, 4) float, each view's crop `(x0, y0, x1, y1)` as fractions of the source
image, and `flips` (B, 2) bool, whether the view was mirrored after cropping. From these the true correspondence of
every dense position is known (`lightning_modules.houghcl.geometry`). Eval loaders are the `[bank, queries]` pair
of the SSL framework (k-NN and the online probe).

- `DigitsGeometryDataModule`: scikit-learn's bundled digits upsampled to `image_size` (CPU demo).
- `ImageFolderGeometryDataModule`: `<root>/train/<class>/*.{jpg,JPEG,png}` (ImageNet, Tiny ImageNet after sorting
  `val` into class folders, COCO images under one dummy class folder) and `<root>/val/<class>/*` for k-NN.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.datasets import DatasetFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as TF

from datamodules.errors import DataLayoutError
from datamodules.ssl.augment import eval_transform
from datamodules.ssl.datamodule import DIGITS_MEAN, DIGITS_STD, SSLDataModule
from datamodules.ssl.datasets import TensorImages, _load_rgb, digits_split


class GeometricViews(Dataset):
    """Wrap `(image, label)` items: per view a random resized crop (recorded as a box), a horizontal flip with
    probability `flip_prob` (recorded) and then the photometric `color` transform (no geometry).

    Images are PIL images or (C, H, W) tensors; the output views are float tensors in [0, 1].
    """

    def __init__(
        self,
        base: Dataset,
        size: int,
        scale: tuple[float, float] = (0.2, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_prob: float = 0.5,
        color=None,
        num_views: int = 2,
    ) -> None:
        self.base, self.size, self.scale, self.ratio = base, int(size), tuple(scale), tuple(ratio)
        self.flip_prob, self.color, self.num_views = float(flip_prob), color, int(num_views)
        self.to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return len(self.base)

    def view(self, image) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One view and its `(x0, y0, x1, y1)` box in fractions of the source image and its flip flag."""
        img = self.to_float(image) if not torch.is_tensor(image) else image.float()
        height, width = img.shape[-2:]
        top, left, h, w = v2.RandomResizedCrop.get_params(img, list(self.scale), list(self.ratio))
        out = TF.resized_crop(
            img, top, left, h, w, [self.size, self.size], InterpolationMode.BILINEAR, antialias=True
        )
        flip = bool(torch.rand(()) < self.flip_prob)
        if flip:
            out = TF.hflip(out)
        if self.color is not None:
            out = self.color(out)
        box = torch.tensor([left / width, top / height, (left + w) / width, (top + h) / height])
        return out.clamp(0, 1), box, flip

    def __getitem__(self, index: int) -> dict:
        image, label = self.base[index]
        views, boxes, flips = zip(*(self.view(image) for _ in range(self.num_views)), strict=True)
        return {
            "views": list(views),
            "labels": label,
            "boxes": torch.stack(boxes),
            "flips": torch.tensor(flips, dtype=torch.bool),
        }


def densecl_color(size: int, blur_prob: float = 0.5) -> v2.Compose:
    """DenseCL's photometric augmentation (official configs): ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, grayscale
    p 0.2, Gaussian blur sigma in [0.1, 2] p `blur_prob` (kernel ~10% of the side)."""
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_prob),
        ]
    )


class DigitsNoise:
    """Photometric jitter for one-channel digits: contrast scaling and Gaussian noise (no geometry)."""

    def __init__(self, contrast: float = 0.3, noise: float = 0.1) -> None:
        self.contrast, self.noise = contrast, noise

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        c = 1 - self.contrast * float(torch.rand(()))
        mean = x.mean()
        return mean + (x - mean) * c + self.noise * torch.randn_like(x)


class DigitsGeometryDataModule(SSLDataModule):
    """scikit-learn digits upsampled (bilinear) to `image_size`; views are random resized crops (`crop_scale`)
    with recorded boxes, flips with probability `flip_prob`, then contrast and noise jitter."""

    mean, std = DIGITS_MEAN, DIGITS_STD

    def __init__(
        self,
        n_train: int = 1200,
        data_seed: int = 0,
        image_size: int = 32,
        crop_scale: tuple[float, float] = (0.3, 1.0),
        flip_prob: float = 0.5,
        contrast: float = 0.3,
        noise: float = 0.1,
        **kwargs,
    ) -> None:
        kwargs.setdefault("num_workers", 0)
        kwargs.setdefault("recipe", "digits")
        super().__init__(**kwargs)
        self.n_train, self.data_seed, self.image_size = int(n_train), int(data_seed), int(image_size)
        self.crop_scale, self.flip_prob = tuple(crop_scale), float(flip_prob)
        self.contrast, self.noise = float(contrast), float(noise)
        self.num_classes = 10
        self.input_shape = (1, self.image_size, self.image_size)

    def _upsample(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False).clamp(0, 1)

    def _load(self) -> None:
        split = digits_split(self.n_train, self.data_seed)
        train_x, test_x = self._upsample(split["train"][0]), self._upsample(split["test"][0])
        self.bank_set = self.clean_set = TensorImages(train_x, split["train"][1])
        self.test_set = TensorImages(test_x, split["test"][1])
        self.train_set = GeometricViews(
            self.bank_set,
            self.image_size,
            self.crop_scale,
            flip_prob=self.flip_prob,
            color=DigitsNoise(self.contrast, self.noise),
            num_views=self.num_views,
        )


class _Folder(DatasetFolder):
    def __init__(self, split_dir: Path, transform=None) -> None:
        super().__init__(str(split_dir), loader=_load_rgb, extensions=IMG_EXTENSIONS, transform=transform)


def _split_dir(root: str | Path, split: str) -> Path:
    path = Path(root) / split
    if not path.is_dir() or not any(p.is_dir() for p in path.iterdir()):
        raise DataLayoutError(
            f"{path} is missing or has no class folders.\n"
            f"  Expected an ImageFolder tree <root>/{{train,val}}/<class>/*.{{JPEG,jpg,png}} under --data.root.\n"
            "  ImageNet: the ILSVRC-2012 train/val folders (val sorted into wnid folders); Tiny ImageNet: "
            "tiny-imagenet-200/train/<wnid>/images/* and val/ sorted by val_annotations.txt into <wnid>/ folders; "
            "COCO: train2017/ and val2017/ each moved under one folder (e.g. <root>/train/all/*.jpg)."
        )
    return path


class ImageFolderGeometryDataModule(SSLDataModule):
    """ImageFolder pre-training images (`<root>/train/<class>/*`, k-NN on `<root>/val/<class>/*`) with DenseCL's
    augmentation: RandomResizedCrop(`image_size`, `crop_scale`) + flip (both recorded) + `densecl_color`."""

    def __init__(
        self,
        root: str = "data/imagenet",
        image_size: int = 224,
        resize: int = 256,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip_prob: float = 0.5,
        blur_prob: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.image_size, self.resize = root, int(image_size), int(resize)
        self.crop_scale, self.flip_prob, self.blur_prob = (
            tuple(crop_scale),
            float(flip_prob),
            float(blur_prob),
        )
        train_dir = _split_dir(root, "train")
        self.num_classes = sum(1 for p in train_dir.iterdir() if p.is_dir())
        self.input_shape = (3, self.image_size, self.image_size)

    def _load(self) -> None:
        plain = eval_transform(self.image_size, self.resize)
        views = _Folder(_split_dir(self.root, "train"))
        if len(views) == 0:
            raise DataLayoutError(f"{self.root}/train has class folders but no images")
        self.train_set = GeometricViews(
            views,
            self.image_size,
            self.crop_scale,
            flip_prob=self.flip_prob,
            color=densecl_color(self.image_size, self.blur_prob),
            num_views=self.num_views,
        )
        self.bank_set = self.clean_set = _Folder(_split_dir(self.root, "train"), plain)
        self.test_set = _Folder(_split_dir(self.root, "val"), plain)
