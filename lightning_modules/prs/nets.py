"""Hybrid backbone for PRS: a convolutional stem, then a ViT-like stack of pre-norm blocks whose token mixer is a
`ReparamAttention` (a KxK convolution that a schedule rewrites into K^2-head self-attention).

The stack has no absolute position embedding: the stem is convolutional and both forms of the mixer carry
relative position (the kernel offsets, then the relative positional attention), so one network serves any input
size. Registered with timm (`prs_vit_digits`, `prs_vit_tiny`, `prs_vit_tiny_patch16`), so the foundation's
`build_backbone(name)` / `ImageClassifier(backbone=name)` builds them by name; the registry import lives in
`lightning_modules/nets/backbones.py`.

Contracts: `reparam_layers()` (the mixers, input to output, for `ReparameterizationSchedule`) and
`feature_maps(x)` (stem and block outputs as (B, C, H, W), for the Fourier analysis).
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp
from timm.models import register_model
from torch import nn

from lightning_modules.prs.layers import ReparamAttention


class ReparamBlock(nn.Module):
    """x + mixer(LN(x)), then x + MLP(LN(x)), with stochastic depth on both branches."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        head_dim: int | None,
        mlp_ratio: float,
        drop_path: float,
        alpha: float,
        switch_gate: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = ReparamAttention(
            dim, kernel_size=kernel_size, head_dim=head_dim, alpha=alpha, switch_gate=switch_gate
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x), size))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HybridViT(nn.Module):
    """Conv stem (3x3 conv, GELU, patch_size x patch_size strided conv) -> `depth` ReparamBlocks -> LN -> mean pool.

    Args:
        in_chans: image channels.
        num_classes: classes of a linear head; 0 returns pooled features (timm convention, `num_features`).
        dim: token width; head_dim * kernel_size^2 need not equal it (the output projection maps back).
        depth: number of blocks (reparameterizable layers).
        patch_size: stride of the stem: a 32x32 image with patch 2 gives 16x16 tokens.
        kernel_size: K of every mixer (K^2 heads).
        head_dim: value width per head (default dim // K^2).
        mlp_ratio: MLP hidden width / dim.
        drop_path_rate: stochastic depth, linear in depth from 0 (timm/DeiT rule).
        alpha: initial sharpness of the content branch's positional prior (0 = plain ViT attention).
        switch_gate: gate value at the switch (1 = function-preserving; 0 = drop the convolution at once).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 0,
        dim: int = 216,
        depth: int = 12,
        patch_size: int = 2,
        kernel_size: int = 3,
        head_dim: int | None = None,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        alpha: float = 4.0,
        switch_gate: float = 1.0,
    ) -> None:
        super().__init__()
        stem_width = max(dim // 2, 8)
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(stem_width, dim, patch_size, stride=patch_size),
        )
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            ReparamBlock(dim, kernel_size, head_dim, mlp_ratio, rate, alpha, switch_gate) for rate in rates
        )
        self.norm = nn.LayerNorm(dim)
        self.num_features = dim
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def reparam_layers(self) -> list[ReparamAttention]:
        """The reparameterizable mixers, from input to output."""
        return [block.mixer for block in self.blocks]

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.stem(x)
        return x.flatten(2).transpose(1, 2), (x.shape[-2], x.shape[-1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tokens, size = self._tokens(x)
        for block in self.blocks:
            tokens = block(tokens, size)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean(dim=1))

    @torch.no_grad()
    def feature_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stem and per-block outputs as (B, C, H, W), in order (names `stem`, `block1`, ...)."""
        tokens, (h, w) = self._tokens(x)

        def as_map(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(1, 2).reshape(t.shape[0], -1, h, w)

        maps = {"stem": as_map(tokens)}
        for i, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, (h, w))
            maps[f"block{i}"] = as_map(tokens)
        return maps


# timm passes these to every entry point; the PRS models have no pretrained weights.
_TIMM_ONLY = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _create(pretrained: bool, defaults: dict, kwargs: dict) -> HybridViT:
    if pretrained:
        raise ValueError("the prs_* models have no pretrained weights; set pretrained: false")
    for key in _TIMM_ONLY:
        kwargs.pop(key, None)
    return HybridViT(**{**defaults, **kwargs})


@register_model
def prs_vit_digits(pretrained: bool = False, **kwargs) -> HybridViT:
    """CPU demo (our spec's digits model): width 36 = 9 heads x 4, 4 blocks, MLP x2; 16x16 input, patch 2."""
    return _create(
        pretrained, dict(dim=36, depth=4, patch_size=2, head_dim=4, mlp_ratio=2.0, alpha=3.0), kwargs
    )


@register_model
def prs_vit_tiny(pretrained: bool = False, **kwargs) -> HybridViT:
    """CIFAR (32x32, patch 2 -> 16x16 tokens): width 216 = 9 heads x 24, 9 blocks, MLP x4, stochastic depth 0.1
    (reconstructed: the paper's architecture is unknown)."""
    defaults = dict(dim=216, depth=9, patch_size=2, head_dim=24, mlp_ratio=4.0, drop_path_rate=0.1)
    return _create(pretrained, defaults, kwargs)


@register_model
def prs_vit_tiny_patch16(pretrained: bool = False, **kwargs) -> HybridViT:
    """ImageNet subsets (224x224, patch 16 -> 14x14 tokens): width 216, 9 blocks, MLP x4, stochastic depth 0.1
    (reconstructed)."""
    defaults = dict(dim=216, depth=9, patch_size=16, head_dim=24, mlp_ratio=4.0, drop_path_rate=0.1)
    return _create(pretrained, defaults, kwargs)
