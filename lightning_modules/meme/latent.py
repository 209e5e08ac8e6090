"""A frozen diffusers `VQModel` read from a local folder: LDM's VQ-f4 autoencoder for MEME's face models.

The core's `FrozenVAE` reads an `AutoencoderKL`; CompVis' FFHQ/CelebA-HQ LDM-4 (the paper's LDM-L, spec §3) uses a
VQ-regularised f4 autoencoder (64x64x3 latents), so this class offers the same interface (``encode``,
``decode``, ``latent_channels``, ``downsample``, ``scaling_factor``) for a `VQModel`. As in LDM, the diffusion
runs on the pre-quantisation latents and decoding quantises them. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VQ_HINT = (
    "Expected a diffusers VQModel folder with config.json and diffusion_pytorch_model.safetensors (or .bin), e.g. "
    "CompVis' VQ-f4 (the 'vq-f4' first stage of latent-diffusion) converted to diffusers; on a machine with "
    "internet:\n"
    '  python -c "from diffusers import VQModel; '
    "VQModel.from_pretrained('CompVis/ldm-celebahq-256', subfolder='vqvae').save_pretrained('/path/to/vq-f4')\"\n"
    "and pass --model.init_args.vae_path /path/to/vq-f4. Nothing is downloaded at run time."
)


class FrozenVQ(nn.Module):
    """Encode/decode with a frozen `VQModel` (eval mode, no gradients); ``z = scaling_factor * E(x)``."""

    def __init__(self, path: str, scaling_factor: float | None = 1.0) -> None:
        super().__init__()
        from diffusers import VQModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"VQ autoencoder not found at {path!r} (no config.json). {VQ_HINT}")
        try:
            self.vae = VQModel.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # missing or unreadable weight file
            raise FileNotFoundError(f"cannot load the VQ autoencoder from {path!r}: {e}. {VQ_HINT}") from e
        self.vae.requires_grad_(False).eval()
        self.scaling_factor = float(1.0 if scaling_factor is None else scaling_factor)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def train(self, mode: bool = True) -> FrozenVQ:
        return super().train(False)  # always frozen

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latents * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor).sample
