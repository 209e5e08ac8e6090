"""A frozen `AutoencoderKL` read from a local folder, for latent diffusion (LDM).

Images in [-1, 1] are encoded to ``z = scaling_factor * mean(E(x))`` (0.18215 for the SD-VAE, the official
ANT code's constant) and decoded back. Nothing is downloaded: the folder must hold a diffusers
`AutoencoderKL` (``config.json`` + ``diffusion_pytorch_model.safetensors``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VAE_HINT = (
    "Expected a diffusers AutoencoderKL folder with config.json and diffusion_pytorch_model.safetensors "
    "(or .bin), e.g. the SD VAE: on a machine with internet run\n"
    '  python -c "from diffusers import AutoencoderKL; '
    "AutoencoderKL.from_pretrained('stabilityai/sd-vae-ft-ema').save_pretrained('/path/to/sd-vae-ft-ema')\"\n"
    "and pass --model.init_args.vae_path /path/to/sd-vae-ft-ema. Nothing is downloaded at run time."
)


class FrozenVAE(nn.Module):
    """Encode/decode with a frozen `AutoencoderKL` (eval mode, no gradients)."""

    def __init__(self, path: str, scaling_factor: float | None = 0.18215) -> None:
        super().__init__()
        from diffusers import AutoencoderKL

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"VAE not found at {path!r} (no config.json). {VAE_HINT}")
        try:
            self.vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # missing or unreadable weight file
            raise FileNotFoundError(f"cannot load the VAE from {path!r}: {e}. {VAE_HINT}") from e
        self.vae.requires_grad_(False).eval()
        self.scaling_factor = float(scaling_factor or self.vae.config.scaling_factor)
        self.latent_channels = int(self.vae.config.latent_channels)
        self.downsample = 2 ** (len(self.vae.config.block_out_channels) - 1)

    def train(self, mode: bool = True) -> FrozenVAE:
        return super().train(False)  # always frozen

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents / self.scaling_factor).sample
