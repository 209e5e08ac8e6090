"""Write a small VOC-layout segmentation set built from scikit-learn's bundled digits (no download).

    python scripts/houghcl_make_digits_voc.py data/digits_voc [--n-train 400 --n-val 200 --canvas 64]

Each image is a `canvas` x `canvas` grayscale picture (saved as an RGB JPEG, as VOC) holding `per_image` digits
(upsampled bilinearly to `digit_size` px) at random positions (boxes overlapping by at most a quarter), plus Gaussian noise. Its mask
(palette PNG, VOC colours) is 0 for background and digit+1 on the digit's stroke pixels (upsampled intensity >=
`fg_threshold`); pixels on the stroke's rim (between `rim_threshold` and `fg_threshold`) are 255 (ignore), as VOC
marks object boundaries. So there are 11 classes. Only the 597 digits that the HoughCL digits demo holds out from
pre-training (`digits_split(1200, 0)`'s test part) are used: the first half for `train`, the rest for `val`, so the
segmentation set shares no digit image with pre-training. Deterministic given `--seed`.

Layout written (what `datamodules.voc.VOCSegmentationDataModule` reads):
    <out>/JPEGImages/<id>.jpg, <out>/SegmentationClass/<id>.png, <out>/ImageSets/Segmentation/{train,val}.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.ssl.datasets import digits_split  # noqa: E402
from datamodules.voc import IGNORE_INDEX, save_mask  # noqa: E402


def place(canvas: int, size: int, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """`count` top-left corners of `size` squares inside the canvas, any two apart by >= 3/4 of `size` along x
    or y (the digits' blank margins keep the strokes apart; rejection sampling)."""
    gap = 0.75 * size
    for _ in range(1000):
        corners = [tuple(rng.integers(0, canvas - size + 1, 2)) for _ in range(count)]
        if all(
            abs(a[0] - b[0]) >= gap or abs(a[1] - b[1]) >= gap
            for i, a in enumerate(corners)
            for b in corners[i + 1 :]
        ):
            return corners
    raise ValueError(f"cannot place {count} digits of {size} px on a {canvas} px canvas apart")


def make_split(
    images: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    out: Path,
    prefix: str,
    args: argparse.Namespace,
    rng: np.random.Generator,
) -> list[str]:
    """Write `n` images and masks composed from `images` (N, 1, 8, 8) in [0, 1]; return their ids."""
    big = F.interpolate(images, size=(args.digit_size,) * 2, mode="bilinear", align_corners=False)
    big = big.clamp(0, 1)[:, 0].numpy()
    ids = []
    for k in range(n):
        pixels = np.zeros((args.canvas, args.canvas), np.float32)
        mask = np.zeros((args.canvas, args.canvas), np.uint8)
        picks = rng.choice(len(labels), size=args.per_image, replace=False)
        for (top, left), i in zip(
            place(args.canvas, args.digit_size, args.per_image, rng), picks, strict=True
        ):
            digit = big[i]
            window = (slice(top, top + args.digit_size), slice(left, left + args.digit_size))
            pixels[window] = np.maximum(pixels[window], digit)
            region = mask[window]
            region[digit >= args.rim_threshold] = IGNORE_INDEX
            region[digit >= args.fg_threshold] = int(labels[i]) + 1
        pixels = np.clip(pixels + args.noise * rng.standard_normal(pixels.shape), 0, 1)
        name = f"{prefix}_{k:05d}"
        Image.fromarray((pixels * 255).round().astype(np.uint8)).convert("RGB").save(
            out / "JPEGImages" / f"{name}.jpg", quality=95
        )
        save_mask(mask, out / "SegmentationClass" / f"{name}.png")
        ids.append(name)
    return ids


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n-train", type=int, default=400)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--canvas", type=int, default=64)
    parser.add_argument("--digit-size", type=int, default=32)
    parser.add_argument("--per-image", type=int, default=2)
    parser.add_argument("--fg-threshold", type=float, default=0.4)
    parser.add_argument("--rim-threshold", type=float, default=0.2)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    held_out, held_labels = digits_split(1200, 0)["test"]
    half = len(held_labels) // 2
    rng = np.random.default_rng(args.seed)
    pools = {"train": (held_out[:half], held_labels[:half]), "val": (held_out[half:], held_labels[half:])}
    counts = {"train": args.n_train, "val": args.n_val}
    for split, (images, labels) in pools.items():
        ids = make_split(images, labels, counts[split], args.out, split, args, rng)
        (args.out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    print(f"wrote {args.n_train} train and {args.n_val} val images to {args.out}")
    return args.out


if __name__ == "__main__":
    main()
