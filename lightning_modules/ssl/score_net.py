"""Score networks s(x, sigma) ~ grad_x log p_sigma(x) for ScoreCL, and their denoising score-matching loss.

Two architectures, both noise-conditional in the NCSN sense (the output is divided by sigma):
- `cnn`: a small convolutional net (our spec's 4-layer CNN for 8x8 digits). Its output is f(x) / sigma, the
  "unconditional net scaled by 1/sigma" parameterisation of NCSNv2 (Song & Ermon 2020, technique 3): cheap and
  adequate for the few sigma levels we use. Written here because diffusers has no network this small.
- `unet`: diffusers' `UNet2DModel` with Gaussian-Fourier embedding of sigma (NCSN++ / score-SDE VE convention:
  the model itself divides its output by sigma).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SmallScoreCNN(nn.Module):
    """`layers` 3x3 convs (SiLU between), same spatial size in and out; s(x, sigma) = f(x) / sigma."""

    def __init__(self, in_chans: int = 1, width: int = 64, layers: int = 4) -> None:
        super().__init__()
        if layers < 2:
            raise ValueError(f"layers must be >= 2, got {layers}")
        blocks: list[nn.Module] = [nn.Conv2d(in_chans, width, 3, padding=1), nn.SiLU()]
        for _ in range(layers - 2):
            blocks += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        blocks.append(nn.Conv2d(width, in_chans, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.net(x) / sigma.view(-1, 1, 1, 1)


class UNetScore(nn.Module):
    """diffusers `UNet2DModel` with Fourier sigma embedding (it divides its output by sigma itself)."""

    def __init__(
        self,
        in_chans: int = 3,
        image_size: int = 32,
        channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
    ) -> None:
        super().__init__()
        from diffusers import UNet2DModel

        self.unet = UNet2DModel(
            sample_size=image_size,
            in_channels=in_chans,
            out_channels=in_chans,
            block_out_channels=tuple(channels),
            layers_per_block=layers_per_block,
            down_block_types=("DownBlock2D",) * len(channels),
            up_block_types=("UpBlock2D",) * len(channels),
            time_embedding_type="fourier",
            norm_num_groups=norm_num_groups,
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.unet(x, sigma.reshape(-1)).sample


def build_score_net(arch: str, in_chans: int, image_size: int, **kwargs) -> nn.Module:
    """`cnn` (SmallScoreCNN) or `unet` (diffusers UNet2DModel)."""
    if arch == "cnn":
        return SmallScoreCNN(in_chans, **kwargs)
    if arch == "unet":
        return UNetScore(in_chans, image_size, **kwargs)
    raise ValueError(f"unknown score network {arch!r}; choose 'cnn' or 'unet'")


def geometric_sigmas(sigma_max: float = 1.0, sigma_min: float = 0.01, num: int = 10) -> torch.Tensor:
    """`num` noise levels from sigma_max down to sigma_min, geometrically spaced (NCSN)."""
    if not 0 < sigma_min < sigma_max or num < 1:
        raise ValueError(f"need 0 < sigma_min < sigma_max and num >= 1, got {sigma_min}, {sigma_max}, {num}")
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), num))


def dsm_loss(
    net: nn.Module, x: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Denoising score matching (NCSN form): E ½‖σ s(x̃, σ) + (x̃ − x)/σ‖², σ drawn uniformly from `sigmas`."""
    idx = torch.randint(len(sigmas), (x.shape[0],), generator=generator).to(x.device)
    sigma = sigmas.to(x.device)[idx].view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator).to(x.device)
    score = net(x + sigma * noise, sigma.view(-1))
    return 0.5 * (sigma * score + noise).pow(2).flatten(1).sum(1).mean()
