"""PASCAL VOC-format semantic segmentation: images, palette-PNG class masks and split lists.

Layout (the official VOC 2012 release, `VOCdevkit/VOC2012/`, passed as `root`):

    <root>/JPEGImages/<id>.jpg
    <root>/SegmentationClass/<id>.png          palette ('P') PNGs: pixel value = class index, 255 = ignore
    <root>/ImageSets/Segmentation/<split>.txt  one <id> a line (train.txt, val.txt, trainval.txt)

The augmented training set (SBD, "VOC 2012 aug", 10,582 images) is read the same way with `mask_dir:
SegmentationClassAug` (grayscale PNGs of class indices, as mmsegmentation's converter writes them) and its list
(`train_split: aug`, i.e. `ImageSets/Segmentation/aug.txt`).

Items are `(image (C, H, W) float normalised, mask (H, W) int64)`. Image and mask get the same geometric
transform; masks are always resized with nearest-neighbour interpolation and padded with 255 (ignored):
- train: the image is rescaled so that its longer side is `base_size * s`, s ~ U(`scale_range`), padded to at least
  `crop_size`, randomly cropped to `crop_size` x `crop_size` and flipped with probability `flip_prob`;
- val / test: rescaled only if its longer side exceeds `eval_size` (aspect kept), then padded to `eval_size` x
  `eval_size`. VOC images are at most 500 px, so with `eval_size: 512` evaluation is at the original resolution
  (the padding is ignored by the loss and by mIoU).

Errors are `DataLayoutError`s that name the file and the expected layout: a missing folder or split list, an empty
list, ids without their image or mask, a corrupt image or mask, an image/mask size mismatch, and mask values that
are neither a class index (< `num_classes`) nor 255.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.loaders import eval_dataloader

IGNORE_INDEX = 255
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (VOCtrainval_11-May-2012.tar)"
LAYOUT = (
    "Expected the VOC layout under --data.init_args.root (e.g. VOCdevkit/VOC2012):\n"
    "    <root>/JPEGImages/<id>.jpg\n"
    "    <root>/<mask_dir>/<id>.png   (SegmentationClass: palette PNGs of class indices, 255 = ignore)\n"
    "    <root>/ImageSets/Segmentation/<split>.txt   (one id a line)\n"
    f"  Get VOC 2012 from {VOC_URL}; for the augmented set (SegmentationClassAug, aug.txt) convert SBD with "
    "mmsegmentation's tools/dataset_converters/voc_aug.py. CPU demo without a download: "
    "python scripts/houghcl_make_digits_voc.py data/digits_voc"
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def voc_palette() -> list[int]:
    """The 256-entry VOC colour map (bit-interleaved label colours), flattened RGB, as the devkit's PNGs use."""
    palette = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def save_mask(mask: np.ndarray, path: str | Path) -> None:
    """Write a (H, W) uint8 class-index mask as a VOC palette ('P' mode) PNG."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(path)


def read_split(root: Path, split: str, mask_dir: str, image_ext: str = ".jpg") -> list[str]:
    """The ids of `split`, after checking that the folders, the list and every listed image and mask exist."""
    if not root.is_dir():
        raise DataLayoutError(f"VOC root {root} does not exist.\n  {LAYOUT}")
    for folder in ("JPEGImages", mask_dir):
        if not (root / folder).is_dir():
            raise DataLayoutError(f"{root / folder} is missing.\n  {LAYOUT}")
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataLayoutError(f"split list {listing} is missing.\n  {LAYOUT}")
    ids = [line.strip().split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataLayoutError(
            f"split list {listing} is empty (no image ids): the '{split}' split has no images"
        )
    no_image = [i for i in ids if not (root / "JPEGImages" / f"{i}{image_ext}").is_file()]
    no_mask = [i for i in ids if not (root / mask_dir / f"{i}.png").is_file()]
    if no_image or no_mask:
        raise DataLayoutError(
            f"{listing} lists ids without their files: {len(no_image)} without JPEGImages/<id>{image_ext} "
            f"(e.g. {no_image[:3]}), {len(no_mask)} without {mask_dir}/<id>.png (e.g. {no_mask[:3]})"
        )
    return ids


def _open(path: Path, what: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
            return img
    except (UnidentifiedImageError, OSError) as err:
        raise CorruptImageError(f"cannot decode {what} {path}: {err}") from err


def load_mask(path: Path, num_classes: int) -> np.ndarray:
    """A (H, W) uint8 class-index mask; rejects RGB masks and values that are neither < num_classes nor 255."""
    img = _open(path, "mask")
    if img.mode not in ("P", "L"):
        raise DataLayoutError(
            f"mask {path} has mode {img.mode!r}: expected a palette ('P') or grayscale ('L') PNG of class "
            "indices (SegmentationClass), not colours"
        )
    mask = np.array(img, dtype=np.uint8)
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE_INDEX)])
    if bad.size:
        raise DataLayoutError(
            f"mask {path} has values {bad.tolist()[:10]} outside [0, {num_classes}) and not {IGNORE_INDEX} "
            f"(ignore): wrong num_classes ({num_classes}) or not a class-index mask"
        )
    return mask


class PairedTransform:
    """The same geometric transform on an image (C, H, W float) and its mask (H, W int64).

    `train=True`: rescale (longer side = `base_size * s`, s ~ U(scale_range)), pad to `crop_size` (image 0, mask
    255), random crop `crop_size`, flip with probability `flip_prob`. `train=False`: shrink to fit `eval_size`
    (aspect kept) when larger, then pad to `eval_size` square. Images are normalised with `mean` / `std` first, so
    the padding is the mean colour.
    """

    def __init__(
        self,
        train: bool,
        crop_size: int,
        eval_size: int,
        base_size: int,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip_prob: float = 0.5,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
    ) -> None:
        self.train, self.crop_size, self.eval_size, self.base_size = train, crop_size, eval_size, base_size
        self.scale_range, self.flip_prob = tuple(scale_range), float(flip_prob)
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    @staticmethod
    def resize(image: torch.Tensor, mask: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = image.shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size == (h, w):
            return image, mask
        image = F.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1
        )
        mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest")
        return image[0], mask[0, 0].long()

    @staticmethod
    def pad(image: torch.Tensor, mask: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = image.shape[-2:]
        ph, pw = max(0, size - h), max(0, size - w)
        if ph or pw:
            image = F.pad(image, (0, pw, 0, ph), value=0.0)
            mask = F.pad(mask, (0, pw, 0, ph), value=IGNORE_INDEX)
        return image, mask

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = (image - self.mean) / self.std
        h, w = image.shape[-2:]
        if not self.train:
            if max(h, w) > self.eval_size:
                image, mask = self.resize(image, mask, self.eval_size / max(h, w))
            return self.pad(image, mask, self.eval_size)
        lo, hi = self.scale_range
        s = lo + (hi - lo) * float(torch.rand(()))
        image, mask = self.resize(image, mask, self.base_size * s / max(h, w))
        image, mask = self.pad(image, mask, self.crop_size)
        h, w = image.shape[-2:]
        top = int(torch.randint(0, h - self.crop_size + 1, ()))
        left = int(torch.randint(0, w - self.crop_size + 1, ()))
        image = image[:, top : top + self.crop_size, left : left + self.crop_size]
        mask = mask[top : top + self.crop_size, left : left + self.crop_size]
        if float(torch.rand(())) < self.flip_prob:
            image, mask = image.flip(-1), mask.flip(-1)
        return image.contiguous(), mask.contiguous()


class VOCSegmentation(Dataset):
    """`(image, mask)` pairs of one split of a VOC-layout folder (see the module docstring)."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        num_classes: int,
        transform: PairedTransform,
        mask_dir: str = "SegmentationClass",
        grayscale: bool = False,
    ) -> None:
        self.root, self.split, self.num_classes = Path(root), split, int(num_classes)
        self.mask_dir, self.grayscale, self.transform = mask_dir, bool(grayscale), transform
        self.ids = read_split(self.root, split, mask_dir)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        name = self.ids[index]
        image_path = self.root / "JPEGImages" / f"{name}.jpg"
        mask_path = self.root / self.mask_dir / f"{name}.png"
        image = _open(image_path, "image").convert("L" if self.grayscale else "RGB")
        mask = load_mask(mask_path, self.num_classes)
        if mask.shape != (image.height, image.width):
            raise DataLayoutError(
                f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} but {image_path} is {image.width}x{image.height}"
            )
        pixels = np.array(image, dtype=np.float32) / 255.0
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return self.transform(torch.from_numpy(np.ascontiguousarray(pixels)), torch.from_numpy(mask).long())


class VOCSegmentationDataModule(L.LightningDataModule):
    """VOC-format segmentation (VOC 2012, VOC 2012 aug, or any folder in that layout).

    Args:
        root: the folder holding JPEGImages/, the mask folder and ImageSets/Segmentation/.
        train_split, val_split, test_split: list names under ImageSets/Segmentation/ (test defaults to val).
        mask_dir: `SegmentationClass` (VOC) or `SegmentationClassAug` (SBD-augmented).
        num_classes: 21 for VOC (background + 20); linked into the model by the CLI.
        crop_size, base_size, scale_range, flip_prob: training transform; eval_size: evaluation padding size.
        grayscale: read images as one channel (the digits demo's backbone is one-channel).
        mean, std: normalisation (ImageNet's by default).
    """

    def __init__(
        self,
        root: str = "data/VOCdevkit/VOC2012",
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        mask_dir: str = "SegmentationClass",
        num_classes: int = 21,
        crop_size: int = 512,
        base_size: int = 512,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip_prob: float = 0.5,
        eval_size: int = 512,
        grayscale: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 4,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2 or num_classes > IGNORE_INDEX:
            raise ValueError(f"num_classes must be in [2, {IGNORE_INDEX}), got {num_classes}")
        self.root, self.mask_dir = Path(root), mask_dir
        self.splits = {"train": train_split, "val": val_split, "test": test_split or val_split}
        self.num_classes = int(num_classes)
        self.crop_size, self.base_size, self.eval_size = int(crop_size), int(base_size), int(eval_size)
        self.scale_range, self.flip_prob, self.grayscale = (
            tuple(scale_range),
            float(flip_prob),
            bool(grayscale),
        )
        channels = 1 if grayscale else 3
        self.mean = tuple(mean) if mean is not None else ((0.5,) if grayscale else IMAGENET_MEAN)
        self.std = tuple(std) if std is not None else ((0.5,) if grayscale else IMAGENET_STD)
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean/std need {channels} values (grayscale={grayscale})")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.pin_memory = int(num_workers), bool(pin_memory)
        self.input_shape = (channels, self.crop_size, self.crop_size)
        self.sets: dict[str, VOCSegmentation] = {}

    def transform(self, train: bool) -> PairedTransform:
        return PairedTransform(
            train,
            self.crop_size,
            self.eval_size,
            self.base_size,
            self.scale_range,
            self.flip_prob,
            self.mean,
            self.std,
        )

    def dataset(self, stage: str) -> VOCSegmentation:
        """The dataset of `stage` (train / val / test), read and checked on first use."""
        if stage not in self.sets:
            self.sets[stage] = VOCSegmentation(
                self.root,
                self.splits[stage],
                self.num_classes,
                self.transform(stage == "train"),
                self.mask_dir,
                self.grayscale,
            )
        return self.sets[stage]

    def setup(self, stage: str | None = None) -> None:
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for name in stages.get(stage, ("train", "val", "test")):
            self.dataset(name)

    def train_dataloader(self) -> DataLoader:
        data = self.dataset("train")
        if len(data) < self.batch_size:
            raise DataLayoutError(
                f"train split '{self.splits['train']}' has {len(data)} images, fewer than batch_size {self.batch_size}"
            )
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.dataset("val"), self.eval_batch_size, self.num_workers, self.pin_memory)

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.dataset("test"), self.eval_batch_size, self.num_workers, self.pin_memory)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
