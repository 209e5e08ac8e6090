"""HoughCL / DenseCL pre-training data: two views per image with each view's crop box and flip recorded.

Training batches are dicts: `views` (list of 2 tensors, normalised on the device by `SSLDataModule`),
`raw_views`, `labels`, `boxes` (B, 2, 4) float, each view's crop `(x0, y0, x1, y1)` as fractions of the source
image, and `flips` (B, 2) bool, whether the view was mirrored after cropping. From these the true correspondence of
every dense position is known (`lightning_modules.houghcl.geometry`). Eval loaders are the `[bank, queries]` pair
of the SSL framework (k-NN and the online probe).

- `DigitsGeometryDataModule`: scikit-learn's bundled digits upsampled to `image_size` (CPU demo).
- `SamplePhotosGeometryDataModule`: scikit-learn's two bundled photos (china, flower; CPU demo on real photos).
- `ImageFolderGeometryDataModule`: ImageNet (`<root>/train/<class>/*`, k-NN on `<root>/val/<class>/*`), Tiny
  ImageNet in its release layout (`layout: tiny_imagenet`) or COCO's flat image folders (`layout: flat`).
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


class RepeatedImages(Dataset):
    """`length` items cycling over a few (C, H, W) images: item i is `(images[i % n], i % n)`."""

    def __init__(self, images: list[torch.Tensor], length: int) -> None:
        if not images or length < 1:
            raise DataLayoutError("RepeatedImages needs at least one image and a positive length")
        self.images, self.length = images, int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        k = index % len(self.images)
        return self.images[k], k


def grid_crops(image: torch.Tensor, size: int, grid: int = 5, fraction: float = 0.4) -> list[torch.Tensor]:
    """`grid` x `grid` fixed crops of `fraction` of each side, evenly spread, each resized to `size`."""
    height, width = image.shape[-2:]
    h, w = int(fraction * height), int(fraction * width)
    crops = []
    for r in range(grid):
        for c in range(grid):
            top, left = round(r * (height - h) / (grid - 1)), round(c * (width - w) / (grid - 1))
            crops.append(TF.resized_crop(image, top, left, h, w, [size, size], antialias=True))
    return crops


class SamplePhotosGeometryDataModule(SSLDataModule):
    """scikit-learn's two bundled photos (`load_sample_images`: china.jpg and flower.jpg, 427x640; no download)
    as pre-training images: each epoch has `n_train` items cycling over the photos, each two random resized crops
    (`crop_scale` of the photo, resized to `image_size`; boxes and flips recorded) with DenseCL's colour recipe.

    Evaluation (a sanity check only; the demo's measure is the pair correctness): k-NN over fixed crops labelled
    by their photo (`num_classes` 2), from a 5x5 grid of crops of 40 % of each side: the crops at even grid
    positions form the bank, the odd ones the queries.
    """

    def __init__(
        self,
        n_train: int = 512,
        image_size: int = 64,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip_prob: float = 0.5,
        blur_prob: float = 0.5,
        **kwargs,
    ) -> None:
        kwargs.setdefault("num_workers", 0)
        super().__init__(**kwargs)
        self.n_train, self.image_size = int(n_train), int(image_size)
        self.crop_scale, self.flip_prob, self.blur_prob = (
            tuple(crop_scale),
            float(flip_prob),
            float(blur_prob),
        )
        self.num_classes = 2
        self.input_shape = (3, self.image_size, self.image_size)

    def _load(self) -> None:
        from sklearn.datasets import load_sample_images

        try:
            photos = load_sample_images().images
        except ImportError as err:  # scikit-learn reads the JPEGs with Pillow
            raise DataLayoutError(f"the sample photos need Pillow: pip install pillow ({err})") from err
        images = [torch.from_numpy(p).permute(2, 0, 1).float().div(255) for p in photos]
        self.train_set = GeometricViews(
            RepeatedImages(images, self.n_train),
            self.image_size,
            self.crop_scale,
            flip_prob=self.flip_prob,
            color=densecl_color(self.image_size, self.blur_prob),
            num_views=self.num_views,
        )
        bank_x, bank_y, query_x, query_y = [], [], [], []
        for label, image in enumerate(images):
            for i, crop in enumerate(grid_crops(image, self.image_size)):
                xs, ys = (bank_x, bank_y) if i % 2 == 0 else (query_x, query_y)
                xs.append(crop.clamp(0, 1))
                ys.append(label)
        self.bank_set = self.clean_set = TensorImages(torch.stack(bank_x), torch.tensor(bank_y))
        self.test_set = TensorImages(torch.stack(query_x), torch.tensor(query_y))


class _Folder(DatasetFolder):
    def __init__(self, split_dir: Path, transform=None) -> None:
        super().__init__(str(split_dir), loader=_load_rgb, extensions=IMG_EXTENSIONS, transform=transform)


class FileImages(Dataset):
    """`(transform(image), label)` over a list of image files (PIL image when `transform` is None)."""

    def __init__(self, files: list[Path], labels: list[int], transform=None) -> None:
        if not files:
            raise DataLayoutError("empty split: no images")
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        image = _load_rgb(str(self.files[index]))
        return (self.transform(image) if self.transform else image), self.labels[index]


LAYOUTS = {
    "imagefolder": "an ImageFolder tree <root>/<train_dir>/<class>/*.{JPEG,jpg,png} and <root>/<val_dir>/<class>/*"
    " (ImageNet)",
    "tiny_imagenet": "tiny-imagenet-200/: train/<wnid>/images/*.JPEG, val/images/*.JPEG and "
    "val/val_annotations.txt (file<TAB>wnid<TAB>box); get http://cs231n.stanford.edu/tiny-imagenet-200.zip",
    "flat": "<root>/<train_dir>/*.jpg and <root>/<val_dir>/*.jpg, unlabelled (COCO: train2017/, val2017/ from "
    "https://cocodataset.org/#download)",
}


def _layout_error(path: Path, what: str, layout: str) -> DataLayoutError:
    return DataLayoutError(
        f"{path} {what}.\n  Expected ({layout} layout) under --data.init_args.root: {LAYOUTS[layout]}.\n"
        "  ImageNet: the ILSVRC-2012 train/val folders (val sorted into wnid folders, image-net.org)."
    )


def _split_dir(root: str | Path, split: str, layout: str = "imagefolder") -> Path:
    path = Path(root) / split
    if not path.is_dir():
        raise _layout_error(path, "is missing", layout)
    if layout != "flat" and not any(p.is_dir() for p in path.iterdir()):
        raise _layout_error(path, "has no class folders (an ImageFolder tree)", layout)
    return path


def flat_images(folder: Path, layout: str = "flat") -> list[Path]:
    """The image files directly in `folder`, sorted; a clear error when there are none."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise _layout_error(folder, "has no images", layout)
    return files


def tiny_imagenet_val(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Tiny ImageNet's validation images and labels from `val/val_annotations.txt` (file, wnid, box)."""
    listing = root / "val" / "val_annotations.txt"
    if not listing.is_file():
        raise _layout_error(listing, "is missing", "tiny_imagenet")
    index = {wnid: i for i, wnid in enumerate(classes)}
    files, labels = [], []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataLayoutError(
                f"{listing} line {n}: expected file<TAB>wnid<TAB>box with a train wnid: {line!r}"
            )
        path = root / "val" / "images" / fields[0]
        if not path.is_file():
            raise DataLayoutError(f"{listing} line {n} names {path}, which does not exist")
        files.append(path)
        labels.append(index[fields[1]])
    if not files:
        raise DataLayoutError(f"{listing} is empty")
    return files, labels


class ImageFolderGeometryDataModule(SSLDataModule):
    """Pre-training images with DenseCL's augmentation: RandomResizedCrop(`image_size`, `crop_scale`) + flip (both
    recorded) + `densecl_color`; k-NN bank = the training images, queries = the validation images.

    `layout`:
    - `imagefolder` (ImageNet): `<root>/<train_dir>/<class>/*`, `<root>/<val_dir>/<class>/*`;
    - `tiny_imagenet`: `tiny-imagenet-200/train/<wnid>/images/*.JPEG` (the boxes files are ignored) and
      `val/images/*.JPEG` labelled by `val/val_annotations.txt`;
    - `flat` (COCO images): `<root>/<train_dir>/*.jpg` (e.g. `train2017`), `<root>/<val_dir>/*.jpg` (`val2017`),
      unlabelled (label 0, `num_classes` 2 for the probe's metric: k-NN and the probe say nothing; the COCO config
      turns them off).
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        layout: str = "imagefolder",
        train_dir: str = "train",
        val_dir: str = "val",
        image_size: int = 224,
        resize: int = 256,
        crop_scale: tuple[float, float] = (0.2, 1.0),
        flip_prob: float = 0.5,
        blur_prob: float = 0.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
        self.root, self.layout, self.image_size, self.resize = (
            Path(root),
            layout,
            int(image_size),
            int(resize),
        )
        self.train_dir, self.val_dir = train_dir, val_dir
        self.crop_scale, self.flip_prob, self.blur_prob = (
            tuple(crop_scale),
            float(flip_prob),
            float(blur_prob),
        )
        train = _split_dir(self.root, train_dir, layout)
        # flat folders are unlabelled (label 0); 2 because the online probe's torchmetrics accuracy needs >= 2
        self.num_classes = 2 if layout == "flat" else sum(1 for p in train.iterdir() if p.is_dir())
        self.input_shape = (3, self.image_size, self.image_size)

    def _sets(self, transform) -> tuple[Dataset, Dataset]:
        """(train, val) datasets of `(transform(image), label)` for the layout."""
        train_path = _split_dir(self.root, self.train_dir, self.layout)
        if self.layout == "flat":
            train = flat_images(train_path)
            val = flat_images(_split_dir(self.root, self.val_dir, "flat"))
            return FileImages(train, [0] * len(train), transform), FileImages(val, [0] * len(val), transform)
        try:
            train_set = _Folder(train_path, transform)
        except FileNotFoundError as err:  # torchvision: a class folder without images
            raise _layout_error(
                train_path, f"has a class folder without images ({err})", self.layout
            ) from err
        if self.layout == "tiny_imagenet":
            files, labels = tiny_imagenet_val(self.root, train_set.classes)
            return train_set, FileImages(files, labels, transform)
        return train_set, _Folder(_split_dir(self.root, self.val_dir, self.layout), transform)

    def _load(self) -> None:
        plain = eval_transform(self.image_size, self.resize)
        views, _ = self._sets(None)
        self.train_set = GeometricViews(
            views,
            self.image_size,
            self.crop_scale,
            flip_prob=self.flip_prob,
            color=densecl_color(self.image_size, self.blur_prob),
            num_views=self.num_views,
        )
        self.bank_set, self.test_set = self._sets(plain)
        self.clean_set = self.bank_set
