"""View augmentation pipelines (solo-learn's recipes) and the strength-scaled digits augmentation.

Pipelines output float tensors in [0, 1] (un-normalised): the datamodule normalises on the device in
`on_after_batch_transfer` and keeps the raw views for callbacks (ScoreCL's score network works in [0, 1]).
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import functional as TF

# solo-learn CIFAR recipes (scripts/pretrain/cifar/*.yaml and augmentations/*.yaml), as summarised in our spec
# (shared/design/methods/scorecl.md, section 3). Keys are the arguments of `view_transform`.
RECIPES: dict[str, dict] = {
    # augmentations/symmetric.yaml (SimCLR, SimSiam and most methods on CIFAR)
    "simclr": dict(
        crop_min_scale=0.08,
        brightness=0.8,
        contrast=0.8,
        saturation=0.8,
        hue=0.2,
        jitter_prob=0.8,
        gray_prob=0.2,
        blur_prob=0.5,
        solarize_prob=0.0,
        flip_prob=0.5,
    ),
    # our spec's table: jitter 0.4/0.4/0.4/0.1, blur 0.5 (RRC 0.08-1, gray 0.2 as symmetric.yaml)
    "simsiam": dict(
        crop_min_scale=0.08,
        brightness=0.4,
        contrast=0.4,
        saturation=0.4,
        hue=0.1,
        jitter_prob=0.8,
        gray_prob=0.2,
        blur_prob=0.5,
        solarize_prob=0.0,
        flip_prob=0.5,
    ),
    # our spec's table: RRC 0.2-1, jitter 0.4/0.4/0.2/0.1, solarize 0.1 (VICReg's asymmetric recipe, averaged)
    "vicreg": dict(
        crop_min_scale=0.2,
        brightness=0.4,
        contrast=0.4,
        saturation=0.2,
        hue=0.1,
        jitter_prob=0.8,
        gray_prob=0.2,
        blur_prob=0.0,
        solarize_prob=0.1,
        flip_prob=0.5,
    ),
    # scripts/pretrain/cifar/wmse.yaml: RRC 0.2-1, jitter 0.8/0.8/0.8/0.2 p 0.8, gray 0.2, no blur
    "wmse": dict(
        crop_min_scale=0.2,
        brightness=0.8,
        contrast=0.8,
        saturation=0.8,
        hue=0.2,
        jitter_prob=0.8,
        gray_prob=0.2,
        blur_prob=0.0,
        solarize_prob=0.0,
        flip_prob=0.5,
    ),
}


def view_transform(
    size: int,
    crop_min_scale: float = 0.08,
    crop_max_scale: float = 1.0,
    brightness: float = 0.8,
    contrast: float = 0.8,
    saturation: float = 0.8,
    hue: float = 0.2,
    jitter_prob: float = 0.8,
    gray_prob: float = 0.2,
    blur_prob: float = 0.0,
    solarize_prob: float = 0.0,
    flip_prob: float = 0.5,
) -> v2.Compose:
    """One random view of a PIL image: RRC, colour jitter, grayscale, blur, solarize, flip -> float [0, 1].

    Blur uses sigma in [0.1, 2] with a kernel of about 10% of the image side (odd), as SimCLR's recipe.
    """
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(
                size,
                scale=(crop_min_scale, crop_max_scale),
                interpolation=InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomApply([v2.ColorJitter(brightness, contrast, saturation, hue)], p=jitter_prob),
            v2.RandomGrayscale(p=gray_prob),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_prob),
            v2.RandomSolarize(threshold=128, p=solarize_prob),
            v2.RandomHorizontalFlip(p=flip_prob),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def eval_transform(size: int, resize: int | None = None) -> v2.Compose:
    """Un-augmented evaluation transform: (resize + centre crop when `resize`) -> float [0, 1]."""
    steps: list = [v2.ToImage()]
    if resize:
        steps += [
            v2.Resize(resize, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
        ]
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])


class DigitsStrengthAugment:
    """Strength-scaled augmentation of an (1, H, W) image in [0, 1] (our spec, section 8).

    Each call draws a strength m ~ U[0, 1] that scales rotation (up to `max_rotation` degrees), scale (up to
    +-`max_scale`), shift (up to `max_shift` pixels), contrast (down to 1 - `max_contrast`), Gaussian noise (sigma up
    to `max_noise`) and the chance of one 3x3 cutout. The last strength is kept in `last_strength` (diagnostics).
    """

    def __init__(
        self,
        max_rotation: float = 30.0,
        max_scale: float = 0.25,
        max_shift: float = 1.0,
        max_contrast: float = 0.5,
        max_noise: float = 0.3,
        cutout_size: int = 3,
    ) -> None:
        self.max_rotation, self.max_scale, self.max_shift = max_rotation, max_scale, max_shift
        self.max_contrast, self.max_noise, self.cutout_size = max_contrast, max_noise, cutout_size
        self.last_strength = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = float(torch.rand(()))
        self.last_strength = m

        def sym() -> float:
            return float(torch.rand(())) * 2 - 1

        angle = m * self.max_rotation * sym()
        scale = 1 + m * self.max_scale * sym()
        shift = [m * self.max_shift * sym(), m * self.max_shift * sym()]
        out = TF.affine(
            x,
            angle=angle,
            translate=shift,
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=0.0,
        )
        contrast = 1 - m * self.max_contrast * float(torch.rand(()))
        mean = out.mean()
        out = mean + (out - mean) * contrast
        out = out + m * self.max_noise * torch.randn_like(out)
        if float(torch.rand(())) < m:
            h, w = out.shape[-2:]
            k = min(self.cutout_size, h, w)
            top, left = int(torch.randint(0, h - k + 1, ())), int(torch.randint(0, w - k + 1, ()))
            out = out.clone()
            out[..., top : top + k, left : left + k] = 0.0
        return out.clamp(0.0, 1.0)
