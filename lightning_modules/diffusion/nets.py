"""Denoising networks: diffusers `UNet2DModel` with named size presets.

Presets are starting points; any `UNet2DModel` argument given in `unet` overrides them. `in_channels`,
`out_channels` and `sample_size` always come from the data (pixels or latents).

- `tiny`: two levels (32, 64), one ResNet block each, no attention: ~0.3M parameters, for 8x8 digits on CPU.
- `adm`: an ADM-like pixel U-Net for 256 px faces (channels 128x(1,1,2,2,4,4), 2 blocks per level, attention
  at 16x16); the face models' exact sizes are not in the paper (reconstructed, see docs/ant.md).
- `ldm`: an LDM-like latent U-Net for 64x64x3 latents (channels 224x(1,2,3,4), attention at 32, 16, 8;
  CompVis' FFHQ/CelebA-HQ LDM-4 sizes, reconstructed).
- `adm256_uncond`: exactly OpenAI's unconditional ImageNet-256 ADM (guided-diffusion), so its released checkpoint
  converts into it (`adm.py`, ``scripts/convert_adm_checkpoint.py``); use with ``learn_sigma=True``.

With ``learn_sigma`` the U-Net has 2C output channels, [epsilon, v] (ADM's learned variance range), and is an
`adm.LearnedSigmaUNet`, whose ``.sample`` is still epsilon.
"""

from __future__ import annotations

from typing import Any

from diffusers import UNet2DModel

from lightning_modules.diffusion.adm import LearnedSigmaUNet, adm_unet_kwargs

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D"),
        "norm_num_groups": 8,
    },
    "adm": {
        "block_out_channels": (128, 128, 256, 256, 512, 512),
        "layers_per_block": 2,
        "down_block_types": (
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        "attention_head_dim": 64,
        "dropout": 0.1,
    },
    "ldm": {
        "block_out_channels": (224, 448, 672, 896),
        "layers_per_block": 2,
        "down_block_types": ("AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D"),
        "attention_head_dim": 32,
    },
    "adm256_uncond": adm_unet_kwargs(),
}


def build_unet(
    channels: int,
    sample_size: int,
    preset: str = "tiny",
    overrides: dict | None = None,
    learn_sigma: bool = False,
) -> UNet2DModel:
    """A `UNet2DModel` for ``channels`` x ``sample_size`` x ``sample_size`` inputs from a preset plus overrides.

    ``learn_sigma``: 2 x ``channels`` outputs read as [epsilon, v] (`LearnedSigmaUNet`).
    """
    if preset not in UNET_PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose one of {sorted(UNET_PRESETS)}")
    kwargs = {**UNET_PRESETS[preset], **(overrides or {})}
    for key in ("block_out_channels", "down_block_types", "up_block_types"):
        kwargs[key] = tuple(kwargs[key])
    levels = len(kwargs["block_out_channels"])
    if sample_size % 2 ** (levels - 1):
        raise ValueError(
            f"sample size {sample_size} is not divisible by 2^{levels - 1} ({levels} U-Net levels)"
        )
    cls = LearnedSigmaUNet if learn_sigma else UNet2DModel
    out = 2 * channels if learn_sigma else channels
    return cls(sample_size=sample_size, in_channels=channels, out_channels=out, **kwargs)
