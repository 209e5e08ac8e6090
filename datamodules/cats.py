"""Correspondence data for CATs: synthetic warped pairs (no download) and the official benchmark layouts.

Every dataset yields dicts (default-collated into batches) with the keys `lightning_modules.cats.CATsModule`
reads: `src_img`, `trg_img` `(3, S, S)` in [0, 1]; `src_kps`, `trg_kps` `(max_kps, 2)` pixel (x, y) padded with
-1; `n_pts`; `src_bbox`, `trg_bbox` `(4,)` x1 y1 x2 y2 pixels; `category` (int).

Pixel coordinates are continuous: pixel (i, j) covers [j, j+1) x [i, i+1), so a resize by factor r maps x to x*r.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import scipy.io
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_sample_images
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.loaders import eval_dataloader
from datamodules.rotated_digits import upsampled_digits


def pad_keypoints(kps: torch.Tensor, max_kps: int) -> torch.Tensor:
    """Pad `(n, 2)` keypoints to `(max_kps, 2)` with -1; more than `max_kps` is an error."""
    if kps.shape[0] > max_kps:
        raise ValueError(f"{kps.shape[0]} keypoints exceed max_kps={max_kps}")
    out = torch.full((max_kps, 2), -1.0)
    out[: kps.shape[0]] = kps
    return out


def random_affine(gen: torch.Generator, rotation_deg: float, log_scale: float, shift: float) -> torch.Tensor:
    """A `(2, 3)` affine map of normalised coordinates (target -> source): rotation, isotropic scale, shift."""
    u = torch.rand(4, generator=gen) * 2 - 1
    angle = math.radians(rotation_deg) * float(u[0])
    scale = math.exp(log_scale * float(u[1]))
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    return torch.tensor([[cos, -sin, 2 * shift * float(u[2])], [sin, cos, 2 * shift * float(u[3])]])


def warp_pair(
    source: torch.Tensor, theta: torch.Tensor, gen: torch.Generator, num_kps: int, margin: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Warp `source` `(C, S, S)` by `theta` (target -> source); return target, target kps, source kps (exact).

    Keypoints are drawn uniformly in the target and kept when their source position lies at least `margin`
    pixels inside the source image; up to `num_kps` are returned.
    """
    size = source.shape[-1]
    grid = F.affine_grid(theta[None], [1, *source.shape], align_corners=False)
    target = F.grid_sample(source[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    cand = torch.rand(8 * num_kps, 2, generator=gen) * size
    norm = cand / size * 2 - 1
    src_norm = norm @ theta[:, :2].T + theta[:, 2]
    src = (src_norm + 1) * size / 2
    inside = ((src >= margin) & (src <= size - margin)).all(dim=1)
    return target, cand[inside][:num_kps], src[inside][:num_kps]


def sample_photos() -> list[torch.Tensor]:
    """scikit-learn's two bundled photos (china.jpg, flower.jpg) as `(3, H, W)` floats in [0, 1]."""
    return [torch.tensor(im).permute(2, 0, 1).float() / 255.0 for im in load_sample_images().images]


class SyntheticWarpPairs(Dataset):
    """Pairs (source, affine-warped target) with exact keypoints, generated deterministically from `seed`.

    `pool` is a list of `(C, H, W)` images (photos: a random `crop` square is cut and resized to `image_size`;
    images already at `image_size` are used whole); `labels` gives each pool image's category.
    """

    def __init__(
        self,
        pool: list[torch.Tensor] | torch.Tensor,
        labels: list[int],
        length: int,
        seed: int,
        image_size: int = 48,
        crop: int = 128,
        num_kps: int = 30,
        max_kps: int = 40,
        rotation_deg: float = 25.0,
        log_scale: float = 0.2,
        shift: float = 0.12,
        gain: float = 0.2,
        noise: float = 0.02,
    ) -> None:
        if length < 1:
            raise ValueError(f"a synthetic split needs at least one pair, got length={length}")
        if num_kps > max_kps:
            raise ValueError(f"num_kps={num_kps} exceeds max_kps={max_kps}")
        self.pool, self.labels, self.length, self.seed = pool, labels, length, seed
        self.image_size, self.crop, self.num_kps, self.max_kps = image_size, crop, num_kps, max_kps
        self.rotation_deg, self.log_scale, self.shift, self.gain, self.noise = (
            rotation_deg,
            log_scale,
            shift,
            gain,
            noise,
        )

    def __len__(self) -> int:
        return self.length

    def _source(self, gen: torch.Generator) -> tuple[torch.Tensor, int]:
        k = int(torch.randint(len(self.pool), (1,), generator=gen))
        image = self.pool[k]
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        h, w = image.shape[-2:]
        if h == w == self.image_size:
            return image.clone(), self.labels[k]
        crop = min(self.crop, h, w)
        top = int(torch.randint(h - crop + 1, (1,), generator=gen))
        left = int(torch.randint(w - crop + 1, (1,), generator=gen))
        patch = image[:, top : top + crop, left : left + crop][None]
        size = (self.image_size, self.image_size)
        return F.interpolate(patch, size=size, mode="bilinear", antialias=True, align_corners=False)[
            0
        ], self.labels[k]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        for _ in range(20):
            source, label = self._source(gen)
            theta = random_affine(gen, self.rotation_deg, self.log_scale, self.shift)
            target, trg_kps, src_kps = warp_pair(source, theta, gen, self.num_kps)
            if len(trg_kps) >= max(1, self.num_kps // 2):
                break
        else:
            raise RuntimeError(
                "could not draw a warp keeping enough keypoints inside the source; lower shift"
            )
        gain = 1 + self.gain * (torch.rand(3, 1, 1, generator=gen) * 2 - 1)
        target = (target * gain + self.noise * torch.randn(target.shape, generator=gen)).clamp(0, 1)
        s = float(self.image_size)
        box = torch.tensor([0.0, 0.0, s, s])
        return {
            "src_img": source,
            "trg_img": target,
            "src_kps": pad_keypoints(src_kps, self.max_kps),
            "trg_kps": pad_keypoints(trg_kps, self.max_kps),
            "n_pts": torch.tensor(len(trg_kps)),
            "src_bbox": box,
            "trg_bbox": box.clone(),
            "category": torch.tensor(label),
        }


class SyntheticWarpDataModule(L.LightningDataModule):
    """Synthetic correspondence: sample photos or digits warped by known random affines (our spec's CPU setup).

    `photos`: train pairs come from china.jpg, val/test pairs from flower.jpg (one category). `digits`: the
    scikit-learn digits upsampled to `image_size`, the first 1000 for training and the rest for val/test, one
    category per digit. Splits are generated from `seed` (train `seed`, val `seed + 1`, test `seed + 2`), so they
    are identical on every rank and every run. PCK uses the image side as threshold (`threshold_mode: image`).
    """

    def __init__(
        self,
        images: str = "photos",
        image_size: int = 48,
        crop: int = 128,
        num_kps: int = 30,
        max_kps: int = 40,
        rotation_deg: float = 25.0,
        log_scale: float = 0.2,
        shift: float = 0.12,
        n_train: int = 6400,
        n_val: int = 64,
        n_test: int = 200,
        batch_size: int = 8,
        eval_batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if images not in ("photos", "digits"):
            raise ValueError(f"images must be 'photos' or 'digits', got {images!r}")
        self.save_hyperparameters()
        self.category_names = ["photo"] if images == "photos" else [str(d) for d in range(10)]
        self.num_classes = len(self.category_names)
        self.input_shape = (3, image_size, image_size)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if hp.images == "photos":
            china, flower = sample_photos()
            train_pool, train_labels, eval_pool, eval_labels = [china], [0], [flower], [0]
        else:
            digits, labels = upsampled_digits(hp.image_size)
            train_pool, train_labels = list(digits[:1000]), labels[:1000].tolist()
            eval_pool, eval_labels = list(digits[1000:]), labels[1000:].tolist()
        kw = dict(
            image_size=hp.image_size,
            crop=hp.crop,
            num_kps=hp.num_kps,
            max_kps=hp.max_kps,
            rotation_deg=hp.rotation_deg,
            log_scale=hp.log_scale,
            shift=hp.shift,
        )
        self.train_set = SyntheticWarpPairs(train_pool, train_labels, hp.n_train, hp.seed, **kw)
        self.val_set = SyntheticWarpPairs(eval_pool, eval_labels, hp.n_val, hp.seed + 1, **kw)
        self.test_set = SyntheticWarpPairs(eval_pool, eval_labels, hp.n_test, hp.seed + 2, **kw)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.val_set, self.hparams.eval_batch_size, self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.test_set, self.hparams.eval_batch_size, self.hparams.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


# ------------------------------------------------------------------------------------------------------------
# Official benchmark layouts: SPair-71k, PF-PASCAL, PF-WILLOW (as the DHPF / CATs loaders read them)
# ------------------------------------------------------------------------------------------------------------

PF_PASCAL_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip

LAYOUTS = {
    "spair": (
        "SPair-71k",
        "<root>/SPair-71k/Layout/large/{trn,val,test}.txt  (lines '<id>-<src>-<trg>:<category>')\n"
        "  <root>/SPair-71k/PairAnnotation/{trn,val,test}/<line>.json  (src_kps, trg_kps, src_bndbox, trg_bndbox)\n"
        "  <root>/SPair-71k/JPEGImages/<category>/<image>.jpg\n"
        "Get it from http://cvlab.postech.ac.kr/research/SPair-71k/ (SPair-71k.tar.gz) and unpack it under <root>.",
    ),
    "pfpascal": (
        "PF-PASCAL",
        "<root>/PF-PASCAL/{trn,val,test}_pairs.csv  (source_image, target_image, class 1..20[, flip])\n"
        "  <root>/PF-PASCAL/JPEGImages/<image>.jpg\n"
        "  <root>/PF-PASCAL/Annotations/<class>/<image>.mat  (kps, bbox)\n"
        "Images/annotations: https://www.di.ens.fr/willow/research/proposalflow/ (PF-PASCAL); the pair CSVs ship with "
        "the DHPF / CATs data downloads (github.com/juhongm999/dhpf).",
    ),
    "pfwillow": (
        "PF-WILLOW",
        "<root>/PF-WILLOW/test_pairs.csv  (imageA, imageB, 10 xA, 10 yA, 10 xB, 10 yB)\n"
        "  <root>/PF-WILLOW/<category>/<image>.png  (the CSV's paths without their first folder)\n"
        "Get it from https://www.di.ens.fr/willow/research/proposalflow/ (PF-WILLOW) plus the DHPF test_pairs.csv.",
    ),
}


def _missing(benchmark: str, what: str) -> DataLayoutError:
    folder, layout = LAYOUTS[benchmark]
    return DataLayoutError(f"{folder}: {what} is missing.\nExpected layout:\n  {layout}")


def load_rgb(path: Path) -> torch.Tensor:
    """An image file as a `(3, H, W)` uint8 tensor; a clear error when it is missing or cannot be decoded."""
    if not path.is_file():
        raise DataLayoutError(f"image file {path} is missing")
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB")).copy()
    except (OSError, ValueError) as exc:
        raise CorruptImageError(f"cannot decode image {path}: {exc}") from exc
    return torch.from_numpy(array).permute(2, 0, 1)


def _as_points(value, where: str) -> torch.Tensor:
    points = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=torch.float32)
    if points.ndim != 2 or points.shape[1] != 2:
        raise DataLayoutError(
            f"{where}: keypoints must be an (N, 2) list of [x, y], got shape {tuple(points.shape)}"
        )
    return points


def _as_box(value, where: str) -> torch.Tensor:
    box = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=torch.float32).flatten()
    if box.numel() != 4:
        raise DataLayoutError(f"{where}: a bbox needs 4 numbers x1 y1 x2 y2, got {box.numel()}")
    return box


@dataclass
class PairRecord:
    """One annotated pair before resizing: image paths, pixel keypoints (matched rows), boxes, category."""

    src_path: Path
    trg_path: Path
    src_kps: torch.Tensor
    trg_kps: torch.Tensor
    src_bbox: torch.Tensor | None
    trg_bbox: torch.Tensor | None
    category: int
    flip: bool = False


def read_spair(root: Path, split: str) -> tuple[list[PairRecord], list[str]]:
    """SPair-71k pairs of `split` (trn / val / test) and the 18 sorted category names."""
    base = root / "SPair-71k"
    listing = base / "Layout" / "large" / f"{split}.txt"
    if not listing.is_file():
        raise _missing("spair", f"split list {listing}")
    categories = (
        sorted(p.name for p in (base / "JPEGImages").iterdir() if p.is_dir())
        if (base / "JPEGImages").is_dir()
        else []
    )
    if not categories:
        raise _missing("spair", f"category folders under {base / 'JPEGImages'}")
    records = []
    for line in listing.read_text().split():
        name, _, category = line.partition(":")
        parts = name.split("-")
        if len(parts) != 3 or not category:
            raise DataLayoutError(
                f"{listing}: bad pair line {line!r}, expected '<id>-<src>-<trg>:<category>'"
            )
        if category not in categories:
            raise DataLayoutError(f"{listing}: category {category!r} has no folder in {base / 'JPEGImages'}")
        ann_path = base / "PairAnnotation" / split / f"{line}.json"
        if not ann_path.is_file():
            raise _missing("spair", f"annotation {ann_path}")
        try:
            ann = json.loads(ann_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataLayoutError(f"{ann_path}: not valid JSON ({exc})") from exc
        for key in ("src_kps", "trg_kps", "src_bndbox", "trg_bndbox"):
            if key not in ann:
                raise DataLayoutError(f"{ann_path}: key {key!r} is missing")
        src, trg = _as_points(ann["src_kps"], str(ann_path)), _as_points(ann["trg_kps"], str(ann_path))
        if len(src) != len(trg) or len(src) == 0:
            raise DataLayoutError(
                f"{ann_path}: {len(src)} source vs {len(trg)} target keypoints (need equal, > 0)"
            )
        folder = base / "JPEGImages" / category
        records.append(
            PairRecord(
                folder / f"{parts[1]}.jpg",
                folder / f"{parts[2]}.jpg",
                src,
                trg,
                _as_box(ann["src_bndbox"], str(ann_path)),
                _as_box(ann["trg_bndbox"], str(ann_path)),
                categories.index(category),
            )
        )
    return records, categories


def _read_mat(path: Path, benchmark: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise _missing(benchmark, f"annotation {path}")
    mat = scipy.io.loadmat(str(path))
    for key in ("kps", "bbox"):
        if key not in mat:
            raise DataLayoutError(f"{path}: key {key!r} is missing")
    return _as_points(mat["kps"], str(path)), _as_box(mat["bbox"], str(path))


def read_pfpascal(root: Path, split: str) -> tuple[list[PairRecord], list[str]]:
    """PF-PASCAL pairs of `split`; keypoint rows that are NaN in either image are dropped (both sides together)."""
    base = root / "PF-PASCAL"
    listing = base / f"{split}_pairs.csv"
    if not listing.is_file():
        raise _missing("pfpascal", f"pair list {listing}")
    with open(listing, newline="") as f:
        rows = list(csv.reader(f))
    records = []
    for row in rows[1:]:
        if len(row) < 3:
            raise DataLayoutError(f"{listing}: bad row {row}, expected source, target, class[, flip]")
        try:
            cls = int(float(row[2])) - 1
        except ValueError as exc:
            raise DataLayoutError(f"{listing}: class {row[2]!r} is not a number 1..20") from exc
        if not 0 <= cls < len(PF_PASCAL_CLASSES):
            raise DataLayoutError(f"{listing}: class {cls + 1} outside 1..20")
        flip = len(row) > 3 and bool(int(float(row[3])))
        src_name, trg_name = Path(row[0]).stem, Path(row[1]).stem
        ann = base / "Annotations" / PF_PASCAL_CLASSES[cls]
        src_kps, src_box = _read_mat(ann / f"{src_name}.mat", "pfpascal")
        trg_kps, trg_box = _read_mat(ann / f"{trg_name}.mat", "pfpascal")
        if len(src_kps) != len(trg_kps):
            raise DataLayoutError(
                f"{ann}: {src_name}.mat has {len(src_kps)} keypoint rows but {trg_name}.mat has {len(trg_kps)}"
            )
        keep = torch.isfinite(src_kps).all(dim=1) & torch.isfinite(trg_kps).all(dim=1)
        if not bool(keep.any()):
            raise DataLayoutError(f"{ann}: {src_name} / {trg_name} share no annotated (non-NaN) keypoint")
        records.append(
            PairRecord(
                base / "JPEGImages" / f"{src_name}.jpg",
                base / "JPEGImages" / f"{trg_name}.jpg",
                src_kps[keep],
                trg_kps[keep],
                src_box,
                trg_box,
                cls,
                flip,
            )
        )
    return records, list(PF_PASCAL_CLASSES)


def read_pfwillow(root: Path, split: str) -> tuple[list[PairRecord], list[str]]:
    """PF-WILLOW test pairs (10 keypoints per image; no boxes: use threshold mode `kps`)."""
    base = root / "PF-WILLOW"
    if split != "test":
        raise DataLayoutError(f"PF-WILLOW has a test split only (asked for {split!r}); train on PF-PASCAL")
    listing = base / "test_pairs.csv"
    if not listing.is_file():
        raise _missing("pfwillow", f"pair list {listing}")
    with open(listing, newline="") as f:
        rows = list(csv.reader(f))[1:]
    parsed = []
    for row in rows:
        if len(row) != 42:
            raise DataLayoutError(f"{listing}: a row needs 2 paths + 40 coordinates, got {len(row)} fields")
        try:
            values = torch.tensor([float(v) for v in row[2:]]).view(4, 10)
        except ValueError as exc:
            raise DataLayoutError(f"{listing}: non-numeric keypoint in row {row[:2]}") from exc
        src_rel, trg_rel = (Path(*Path(p).parts[1:]) for p in row[:2])
        parsed.append((base / src_rel, base / trg_rel, values, src_rel.parts[0]))
    categories = sorted({p[3] for p in parsed})
    records = [
        PairRecord(
            s, t, torch.stack([v[0], v[1]], 1), torch.stack([v[2], v[3]], 1), None, None, categories.index(c)
        )
        for s, t, v, c in parsed
    ]
    return records, categories


READERS = {"spair": read_spair, "pfpascal": read_pfpascal, "pfwillow": read_pfwillow}


class Photometric:
    """The official training photometric ops, each applied with probability `p` (torchvision v2, uint8)."""

    def __init__(self, p: float = 0.2) -> None:
        from torchvision.transforms import v2

        ops = [
            v2.Grayscale(num_output_channels=3),
            v2.RandomPosterize(bits=4, p=1.0),
            v2.RandomEqualize(p=1.0),
            v2.RandomAdjustSharpness(sharpness_factor=2.0, p=1.0),
            v2.ColorJitter(brightness=0.2, contrast=0.2),
            v2.RandomSolarize(threshold=128, p=1.0),
            v2.ColorJitter(saturation=0.2, hue=0.05),
        ]
        self.ops = [v2.RandomApply([op], p=p) for op in ops]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for op in self.ops:
            image = op(image)
        return image


def bbox_keeping_crop(
    image: torch.Tensor, kps: torch.Tensor, bbox: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random crop that still contains `bbox`; keypoints and box are shifted into the crop's frame."""
    h, w = image.shape[-2:]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
    u = torch.rand(4, generator=gen).tolist()
    left, top = int(u[0] * x1), int(u[1] * y1)
    right, bottom = math.ceil(x2 + u[2] * (w - x2)), math.ceil(y2 + u[3] * (h - y2))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    shift = torch.tensor([left, top], dtype=torch.float32)
    return image[:, top:bottom, left:right], kps - shift, bbox - shift.repeat(2)


class BenchmarkPairs(Dataset):
    """Pairs of one benchmark split, resized to `image_size` (aspect not kept), keypoints and boxes rescaled.

    Training (`augment`): photometric ops (p = 0.2 each), with p = `crop_p` a bbox-keeping random crop per image,
    keypoints clamped to the image; PF-PASCAL's `flip` flag mirrors both images. A missing box (PF-WILLOW) is
    replaced by the keypoints' extent.
    """

    def __init__(
        self,
        records: list[PairRecord],
        image_size: int = 256,
        max_kps: int = 40,
        augment: bool = False,
        crop_p: float = 0.5,
        seed: int = 0,
    ) -> None:
        if not records:
            raise DataLayoutError("this split lists no pairs")
        too_many = [r for r in records if len(r.src_kps) > max_kps]
        if too_many:
            raise DataLayoutError(
                f"{too_many[0].src_path}: {len(too_many[0].src_kps)} keypoints > max_kps={max_kps}"
            )
        self.records, self.image_size, self.max_kps = records, image_size, max_kps
        self.augment, self.crop_p, self.seed = augment, crop_p, seed
        self.photometric = Photometric() if augment else None
        self.calls = 0

    def __len__(self) -> int:
        return len(self.records)

    def _prepare(self, path, kps, bbox, flip, gen) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = load_rgb(path)
        if bbox is None:
            bbox = torch.cat([kps.amin(0), kps.amax(0)])
        kps, bbox = kps.clone(), bbox.clone()
        if flip:
            w = image.shape[-1]
            image = image.flip(-1)
            kps[:, 0] = w - kps[:, 0]
            bbox = torch.tensor([w - bbox[2], bbox[1], w - bbox[0], bbox[3]])
        if self.augment and float(torch.rand(1, generator=gen)) < self.crop_p:
            image, kps, bbox = bbox_keeping_crop(image, kps, bbox, gen)
        if self.photometric is not None:
            image = self.photometric(image)
        h, w = image.shape[-2:]
        scale = torch.tensor([self.image_size / w, self.image_size / h])
        size = (self.image_size, self.image_size)
        image = F.interpolate(image[None].float() / 255.0, size=size, mode="bilinear", align_corners=False)[0]
        kps = kps * scale
        if self.augment:
            kps = kps.clamp(0, self.image_size - 1)
        return image.clamp(0, 1), kps, bbox * scale.repeat(2)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rec = self.records[index]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index + 7919 * self.calls)
        if self.augment:
            self.calls += 1  # a different crop each time the pair is drawn
        src_img, src_kps, src_box = self._prepare(rec.src_path, rec.src_kps, rec.src_bbox, rec.flip, gen)
        trg_img, trg_kps, trg_box = self._prepare(rec.trg_path, rec.trg_kps, rec.trg_bbox, rec.flip, gen)
        return {
            "src_img": src_img,
            "trg_img": trg_img,
            "src_kps": pad_keypoints(src_kps, self.max_kps),
            "trg_kps": pad_keypoints(trg_kps, self.max_kps),
            "n_pts": torch.tensor(len(src_kps)),
            "src_bbox": src_box,
            "trg_bbox": trg_box,
            "category": torch.tensor(rec.category),
        }


class CorrespondenceDataModule(L.LightningDataModule):
    """SPair-71k / PF-PASCAL (train, val, test) and PF-WILLOW (test) in their official layouts under `root`.

    `benchmark` gives the train/val data; `test_benchmark` (default: the same) the test data, e.g. PF-WILLOW
    tested with a PF-PASCAL model (set the model's `threshold_mode: kps` for it). `num_classes` (categories)
    and `input_shape` are linked into the model by the CLI; `category_names` names the per-category PCK.
    """

    def __init__(
        self,
        root: str = "data/correspondence",
        benchmark: str = "spair",
        test_benchmark: str | None = None,
        image_size: int = 256,
        max_kps: int = 40,
        augment: bool = True,
        crop_p: float = 0.5,
        batch_size: int = 32,
        eval_batch_size: int = 32,
        num_workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name in (benchmark, test_benchmark):
            if name is not None and name not in READERS:
                raise ValueError(f"benchmark must be one of {sorted(READERS)}, got {name!r}")
        if benchmark == "pfwillow":
            raise ValueError(
                "PF-WILLOW has no training split: use benchmark pfpascal, test_benchmark pfwillow"
            )
        self.save_hyperparameters()
        self.test_name = test_benchmark or benchmark
        self.input_shape = (3, image_size, image_size)
        self.category_names = self._categories(self.test_name)
        self.num_classes = len(self.category_names)

    def _categories(self, benchmark: str) -> list[str]:
        if benchmark == "pfpascal":
            return list(PF_PASCAL_CLASSES)
        if benchmark == "spair":
            folder = Path(self.hparams.root) / "SPair-71k" / "JPEGImages"
            if not folder.is_dir():
                raise _missing("spair", f"folder {folder}")
            return sorted(p.name for p in folder.iterdir() if p.is_dir())
        return read_pfwillow(Path(self.hparams.root), "test")[1]

    def _dataset(self, benchmark: str, split: str, augment: bool) -> BenchmarkPairs:
        hp = self.hparams
        records, names = READERS[benchmark](Path(hp.root), split)
        if split == "test" and names != self.category_names:
            raise DataLayoutError(f"{benchmark} categories changed since the datamodule was built")
        return BenchmarkPairs(records, hp.image_size, hp.max_kps, augment, hp.crop_p, hp.seed)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if stage in (None, "fit"):
            self.train_set = self._dataset(hp.benchmark, "trn", hp.augment)
        if stage in (None, "fit", "validate"):
            self.val_set = self._dataset(hp.benchmark, "val", False)
        if stage in (None, "test", "predict"):
            self.test_set = self._dataset(self.test_name, "test", False)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.train_set, batch_size=hp.batch_size, shuffle=True, num_workers=hp.num_workers, drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        return eval_dataloader(self.val_set, self.hparams.eval_batch_size, self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return eval_dataloader(self.test_set, self.hparams.eval_batch_size, self.hparams.num_workers)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()


class PairFolder(Dataset):
    """Image pairs listed in `<root>/pairs.csv` (header `source,target`, paths relative to `root`), for predict."""

    def __init__(self, root: Path, image_size: int) -> None:
        listing = root / "pairs.csv"
        if not listing.is_file():
            raise DataLayoutError(
                f"{listing} is missing: predict reads a CSV with a header 'source,target' and one image pair per "
                "row, paths relative to the folder"
            )
        with open(listing, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows:
            raise DataLayoutError(f"{listing} lists no pairs")
        if "source" not in rows[0] or "target" not in rows[0]:
            raise DataLayoutError(f"{listing}: the header must name the columns 'source' and 'target'")
        self.pairs = [(root / r["source"], root / r["target"]) for r in rows]
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, path: Path) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        image = load_rgb(path)[None].float() / 255.0
        return F.interpolate(image, size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)

    def __getitem__(self, index: int) -> dict:
        src, trg = self.pairs[index]
        return {
            "src_img": self._load(src),
            "trg_img": self._load(trg),
            "name": f"{index:05d}_{trg.stem}_to_{src.stem}",
        }


class PairFolderDataModule(L.LightningDataModule):
    """Predict-only data: the pairs of `<root>/pairs.csv`, resized to `image_size` (`python cli.py predict`)."""

    def __init__(
        self, root: str = "pairs", image_size: int = 256, batch_size: int = 8, num_workers: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.input_shape = (3, image_size, image_size)

    def setup(self, stage: str | None = None) -> None:
        self.predict_set = PairFolder(Path(self.hparams.root), self.hparams.image_size)

    def predict_dataloader(self) -> DataLoader:
        return eval_dataloader(self.predict_set, self.hparams.batch_size, self.hparams.num_workers)
