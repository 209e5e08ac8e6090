"""MEME's denoisers: the frequency mixer, the iU-Net built from it, and the per-expert channel ratios.

The mixer follows the Inception-Transformer recipe (Si et al., NeurIPS 2022) that a third-party description of
MEME names; the MEME paper's own block is not verified (docs/meme.md, "reconstructed"). For ``C`` input channels
and a high-frequency ratio ``rho``:

- ``C_h = 2 * round(rho * C / 2)`` channels (even, so they split in two halves) go to the high-frequency (conv)
  path and ``C_l = C - C_h`` to the low-frequency (attention) path; ``rho = 1`` is pure convolution (no attention
  module exists) and ``rho = 0`` pure attention (no conv path exists);
- high: ``Y_h1 = Conv1x1(MaxPool3x3(X_h1))`` and ``Y_h2 = DWConv3x3(Conv1x1(X_h2))``;
- low: ``Y_l = Upsample(MHSA(AvgPool_p(X_l)))`` with pooling ``p`` (1 = none, used at the lowest resolution);
- out: ``Conv1x1(Y + DWConv3x3(Y))`` with ``Y = concat(Y_h1, Y_h2, Y_l)``.

`MixerBlock` wraps it as a pre-norm residual block followed by an MLP, each branch conditioned on the timestep
embedding by scale-shift (as LDM's ResBlocks). `IUNet` is a diffusers-style U-Net (diffusers `ResnetBlock2D`,
`Downsample2D`, `Upsample2D`, `Timesteps`, `TimestepEmbedding`; attention from diffusers `Attention`) with a
`MixerBlock` after each ResNet block where an LDM U-Net has its attention blocks, one ratio per stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d import UNet2DOutput
from diffusers.models.upsampling import Upsample2D
from torch import nn

from lightning_modules.diffusion.nets import build_unet

RATIO_DIRECTIONS = ("conv_low_t", "conv_high_t")


def split_channels(channels: int, ratio: float) -> tuple[int, int]:
    """``(C_h, C_l)``: high-frequency (conv) and low-frequency (attention) channels for the ratio ``rho``."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the high-frequency ratio must lie in [0, 1], got {ratio}")
    high = min(channels, 2 * round(ratio * channels / 2))
    return high, channels - high


def expert_ratios(
    num_experts: int,
    num_stages: int,
    base: Sequence[float] = (0.75, 0.5, 0.375, 0.25),
    stage_scale: Sequence[float] = (1.0, 0.8, 0.6, 0.5),
    direction: str = "conv_low_t",
    clip: Sequence[float] = (1 / 16, 15 / 16),
) -> list[list[float]]:
    """``ratios[n][s] = clip(base'[n] * stage_scale[s])`` (spec §2.3, reconstructed).

    ``base`` is listed from the most conv-heavy expert down; ``conv_low_t`` gives it to expert 0 (the lowest
    timesteps, least noise), ``conv_high_t`` reverses the list (the control). Within an expert the ratio falls
    with depth (iFormer's frequency ramp).
    """
    if direction not in RATIO_DIRECTIONS:
        raise ValueError(f"ratio_direction must be one of {RATIO_DIRECTIONS}, got {direction!r}")
    if len(base) != num_experts:
        raise ValueError(f"ratio_base has {len(base)} entries for {num_experts} experts")
    if len(stage_scale) < num_stages:
        raise ValueError(f"ratio_stage_scale has {len(stage_scale)} entries for {num_stages} stages")
    low, high = float(clip[0]), float(clip[1])
    ordered = list(base) if direction == "conv_low_t" else list(base)[::-1]
    return [[min(high, max(low, float(b) * float(s))) for s in stage_scale[:num_stages]] for b in ordered]


class FrequencyMixer(nn.Module):
    """iFormer-style token mixer: a conv (high-pass) path on ``C_h`` channels, pooled MHSA (low-pass) on the rest.

    Args:
        channels: C.
        ratio: rho = C_h / C (rounded to an even C_h).
        head_dim: attention channels per head (heads = the largest divisor of C_l not above C_l / head_dim).
        pool: average-pooling factor before attention (1 = none); the result is upsampled back (nearest).
    """

    def __init__(self, channels: int, ratio: float, head_dim: int = 32, pool: int = 2) -> None:
        super().__init__()
        self.channels, self.ratio, self.pool = int(channels), float(ratio), int(pool)
        self.high_channels, self.low_channels = split_channels(self.channels, self.ratio)
        h1 = self.high_channels // 2
        h2 = self.high_channels - h1
        self.high_pool = None
        self.high_dw = None
        if self.high_channels:
            self.high_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(h1, h1, 1))
            self.high_dw = nn.Sequential(nn.Conv2d(h2, h2, 1), nn.Conv2d(h2, h2, 3, padding=1, groups=h2))
        self.attention = None
        if self.low_channels:
            c = self.low_channels
            heads = max(1, c // head_dim)
            while c % heads:
                heads -= 1
            self.attention = Attention(query_dim=c, heads=heads, dim_head=c // heads, bias=True)
        self.fuse_dw = nn.Conv2d(self.channels, self.channels, 3, padding=1, groups=self.channels)
        self.fuse = nn.Conv2d(self.channels, self.channels, 1)

    def _low(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        b, c, h, w = x.shape
        tokens = self.attention(x.flatten(2).transpose(1, 2))
        y = tokens.transpose(1, 2).reshape(b, c, h, w)
        return F.interpolate(y, size=size, mode="nearest") if self.pool > 1 else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.high_channels:
            h1 = self.high_channels // 2
            parts.append(self.high_pool(x[:, :h1]))
            parts.append(self.high_dw(x[:, h1 : self.high_channels]))
        if self.low_channels:
            parts.append(self._low(x[:, self.high_channels :]))
        y = torch.cat(parts, dim=1)
        return self.fuse(y + self.fuse_dw(y))


class MixerBlock(nn.Module):
    """Pre-norm residual `FrequencyMixer` then a pre-norm residual MLP, both scale-shift conditioned on ``temb``."""

    def __init__(
        self,
        channels: int,
        ratio: float,
        temb_channels: int,
        head_dim: int = 32,
        pool: int = 2,
        mlp_ratio: float = 2.0,
        groups: int = 8,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, affine=False, eps=1e-6)
        self.norm2 = nn.GroupNorm(groups, channels, affine=False, eps=1e-6)
        self.modulation = nn.Linear(temb_channels, 4 * channels)
        self.mixer = FrequencyMixer(channels, ratio, head_dim, pool)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1))
        # the MLP branch starts as the identity (as LDM's zero-initialised outputs)
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        s1, b1, s2, b2 = self.modulation(F.silu(temb))[:, :, None, None].chunk(4, dim=1)
        x = x + self.mixer(self.norm1(x) * (1 + s1) + b1)
        return x + self.mlp(self.norm2(x) * (1 + s2) + b2)


class IUNet(nn.Module):
    """A U-Net whose attention blocks are `MixerBlock` s with one high-frequency ratio per stage.

    ``forward(x, t).sample`` predicts epsilon, like diffusers' `UNet2DModel`.

    Args:
        in_channels, sample_size: image/latent channels and side.
        block_out_channels: channels per stage (each stage after the first halves the resolution).
        ratios: rho per stage; ``None`` for a stage leaves it without mixers (plain ResNet stage).
        mixer_stages: which stages get mixers (default all; LDM has no attention at the highest resolution).
        layers_per_block: ResNet(+mixer) layers per down stage (up stages get one more, as in diffusers).
        head_dim, mlp_ratio, attn_pool, norm_num_groups: mixer settings; the lowest resolution never pools.
    """

    def __init__(
        self,
        in_channels: int,
        sample_size: int,
        block_out_channels: Sequence[int] = (32, 64),
        ratios: Sequence[float | None] = (0.5, 0.5),
        layers_per_block: int = 1,
        head_dim: int = 32,
        mlp_ratio: float = 2.0,
        attn_pool: int = 2,
        norm_num_groups: int = 8,
        mixer_stages: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        chs = [int(c) for c in block_out_channels]
        if len(ratios) != len(chs):
            raise ValueError(f"{len(ratios)} ratios for {len(chs)} stages")
        if mixer_stages is not None:
            if len(mixer_stages) != len(chs):
                raise ValueError(f"{len(mixer_stages)} mixer_stages for {len(chs)} stages")
            ratios = [r if on else None for r, on in zip(ratios, mixer_stages, strict=True)]
        if sample_size % 2 ** (len(chs) - 1):
            raise ValueError(f"sample size {sample_size} is not divisible by 2^{len(chs) - 1}")
        self.ratios = [None if r is None else float(r) for r in ratios]
        self.block_out_channels = chs
        temb = 4 * chs[0]
        self.time_proj = Timesteps(chs[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(chs[0], temb)
        self.conv_in = nn.Conv2d(in_channels, chs[0], 3, padding=1)
        last = len(chs) - 1

        def resnet(cin: int, cout: int) -> ResnetBlock2D:
            return ResnetBlock2D(
                in_channels=cin, out_channels=cout, temb_channels=temb, groups=norm_num_groups
            )

        def mixer(stage: int, ch: int) -> nn.Module | None:
            if self.ratios[stage] is None:
                return None
            pool = 1 if stage == last else attn_pool
            return MixerBlock(ch, self.ratios[stage], temb, head_dim, pool, mlp_ratio, norm_num_groups)

        self.down = nn.ModuleList()
        skips = [chs[0]]
        cin = chs[0]
        for s, ch in enumerate(chs):
            stage = nn.ModuleDict({"resnets": nn.ModuleList(), "mixers": nn.ModuleList()})
            for _ in range(layers_per_block):
                stage["resnets"].append(resnet(cin, ch))
                stage["mixers"].append(mixer(s, ch) or nn.Identity())
                cin = ch
                skips.append(ch)
            if s != last:
                stage["sample"] = Downsample2D(ch, use_conv=True, out_channels=ch)
                skips.append(ch)
            self.down.append(stage)
        self.mid_resnet1 = resnet(cin, cin)
        self.mid_mixer = mixer(last, cin) or nn.Identity()
        self.mid_resnet2 = resnet(cin, cin)
        self.up = nn.ModuleList()
        for s in reversed(range(len(chs))):
            ch = chs[s]
            stage = nn.ModuleDict({"resnets": nn.ModuleList(), "mixers": nn.ModuleList()})
            for _ in range(layers_per_block + 1):
                stage["resnets"].append(resnet(cin + skips.pop(), ch))
                stage["mixers"].append(mixer(s, ch) or nn.Identity())
                cin = ch
            if s != 0:
                stage["sample"] = Upsample2D(ch, use_conv=True, out_channels=ch)
            self.up.append(stage)
        self.norm_out = nn.GroupNorm(norm_num_groups, chs[0], eps=1e-6)
        self.conv_out = nn.Conv2d(chs[0], in_channels, 3, padding=1)

    @staticmethod
    def _run(block: nn.Module, h: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return h if isinstance(block, nn.Identity) else block(h, temb)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> UNet2DOutput:
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        temb = self.time_embedding(self.time_proj(t).to(x.dtype))
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            for res, mix in zip(stage["resnets"], stage["mixers"], strict=True):
                h = self._run(mix, res(h, temb), temb)
                skips.append(h)
            if "sample" in stage:
                h = stage["sample"](h)
                skips.append(h)
        h = self.mid_resnet2(self._run(self.mid_mixer, self.mid_resnet1(h, temb), temb), temb)
        for stage in self.up:
            for res, mix in zip(stage["resnets"], stage["mixers"], strict=True):
                h = self._run(mix, res(torch.cat([h, skips.pop()], dim=1), temb), temb)
            if "sample" in stage:
                h = stage["sample"](h)
        return UNet2DOutput(sample=self.conv_out(F.silu(self.norm_out(h))))


ARCHITECTURES = ("iunet", "unet")


def build_expert(
    architecture: str,
    channels: int,
    sample_size: int,
    net_args: dict[str, Any] | None = None,
    ratios: Sequence[float | None] | None = None,
) -> nn.Module:
    """One denoiser: an `IUNet` (with per-stage ``ratios``) or the core's diffusers `UNet2DModel`.

    For ``unet``, ``net_args`` may hold ``preset`` (a `build_unet` preset) and any `UNet2DModel` overrides.
    """
    args = dict(net_args or {})
    if architecture == "iunet":
        if ratios is None:
            raise ValueError("an iU-Net expert needs its per-stage ratios")
        return IUNet(channels, sample_size, ratios=ratios, **args)
    if architecture == "unet":
        preset = args.pop("preset", "tiny")
        return build_unet(channels, sample_size, preset, args)
    raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
