"""CATs networks: hyperpixel features, correlation, mutual-NN filter, the transformer aggregator, soft-argmax.

Shapes: a correlation is `(B, L, Ns, Nt)` (L levels, Ns source cells, Nt target cells, both `h*w`, row-major);
the aggregated one is `(B, Ns, Nt)`; a flow is `(B, 2, h, w)` on the target grid, in cell units, pointing from
each target cell to its source match (target -> source, as in the official code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp, trunc_normal_
from timm.models.resnet import BasicBlock, Bottleneck
from timm.models.vision_transformer import Attention
from torch import nn

from lightning_modules.nets.backbones import build_backbone


class HyperpixelBackbone(nn.Module):
    """A timm ResNet returning the "hyperpixel" levels of the CATs/HPF papers, each resized to `feature_size`.

    Level 0 is the output of conv1-bn-relu-maxpool; level i >= 1 is the i-th residual block's output *before its
    final ReLU* (ResNet-101 has 33 blocks). The levels are read with forward hooks on the timm model (timm's
    `features_only` wrapper exposes stage outputs only, not every block, so it cannot give these ids).
    """

    def __init__(
        self,
        name: str,
        hyperpixel_ids: list[int],
        feature_size: int,
        pretrained: bool = False,
        pretrained_path: str | None = None,
        allow_download: bool = False,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        if not hyperpixel_ids:
            raise ValueError("hyperpixel_ids must list at least one level")
        self.net, _ = build_backbone(
            name,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
            allow_download=allow_download,
            **timm_kwargs,
        )
        if not all(hasattr(self.net, a) for a in ("conv1", "maxpool", "layer1", "layer4")):
            raise ValueError(
                f"backbone {name!r} is not a timm ResNet (conv1 .. layer4): hyperpixels need one"
            )
        blocks = [
            b for layer in (self.net.layer1, self.net.layer2, self.net.layer3, self.net.layer4) for b in layer
        ]
        bad = [i for i in hyperpixel_ids if not 0 <= i <= len(blocks)]
        if bad:
            raise ValueError(f"hyperpixel ids {bad} out of range [0, {len(blocks)}] for {name!r}")
        self.hyperpixel_ids = list(hyperpixel_ids)
        self.feature_size = feature_size
        self._store: dict[int, torch.Tensor] = {}
        self.net.maxpool.register_forward_hook(self._keep_output(0))
        for i, block in enumerate(blocks, start=1):
            if i in self.hyperpixel_ids:
                final_act = block.act3 if isinstance(block, Bottleneck) else block.act2
                if not isinstance(block, (Bottleneck, BasicBlock)):
                    raise ValueError(f"unsupported residual block {type(block).__name__}")
                final_act.register_forward_pre_hook(self._keep_input(i))
        self.last_block = max(self.hyperpixel_ids)
        self.stage_ends = [
            len(self.net.layer1),
            len(self.net.layer2),
            len(self.net.layer3),
            len(self.net.layer4),
        ]
        # drop what feeds no requested level (later stages, pooling, head): no unused parameters under DDP
        done = 0
        for k, n in enumerate(self.stage_ends, start=1):
            if done >= self.last_block:
                setattr(self.net, f"layer{k}", nn.Identity())
            done += n
        self.net.global_pool, self.net.fc = nn.Identity(), nn.Identity()
        with torch.no_grad():
            was = self.training
            self.eval()
            feats = self(torch.zeros(1, timm_kwargs.get("in_chans", 3), 64, 64))
            self.train(was)
        self.channels = [f.shape[1] for f in feats]

    def _keep_output(self, idx: int):
        def hook(_module, _inputs, output):
            if idx in self.hyperpixel_ids:
                self._store[idx] = output

        return hook

    def _keep_input(self, idx: int):
        def hook(_module, inputs):
            self._store[idx] = inputs[0].clone()  # the ReLU is in-place: keep the pre-activation

        return hook

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the levels in `hyperpixel_ids` order, each `(B, C_l, feature_size, feature_size)`."""
        self._store = {}
        net = self.net
        x = net.maxpool(net.act1(net.bn1(net.conv1(x))))
        done = 0
        for layer, n in zip((net.layer1, net.layer2, net.layer3, net.layer4), self.stage_ends, strict=True):
            if done >= self.last_block:
                break  # later stages feed no requested level
            x = layer(x)
            done += n
        size = (self.feature_size, self.feature_size)
        out = [
            F.interpolate(self._store[i], size=size, mode="bilinear", align_corners=True)
            for i in self.hyperpixel_ids
        ]
        self._store = {}
        return out


def correlation(src_feats: list[torch.Tensor], trg_feats: list[torch.Tensor]) -> torch.Tensor:
    """Cosine similarity per level: `(B, L, Ns, Nt)` with `C[b, l, s, t] = <S_l[:, s], T_l[:, t]>` (L2-normalised)."""
    corrs = []
    for s, t in zip(src_feats, trg_feats, strict=True):
        s = F.normalize(s.flatten(2), dim=1)
        t = F.normalize(t.flatten(2), dim=1)
        corrs.append(torch.einsum("bcs,bct->bst", s, t))
    return torch.stack(corrs, dim=1)


def mutual_nn_filter(corr: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    """Soft mutual nearest-neighbour filter: `C * (C / max_trg C) * (C / max_src C)` over the last two axes.

    A maximum of zero is replaced by `eps` so an all-zero row or column stays zero instead of becoming NaN.
    """
    max_over_trg = corr.amax(dim=-1, keepdim=True)
    max_over_src = corr.amax(dim=-2, keepdim=True)
    max_over_trg = torch.where(max_over_trg == 0, torch.full_like(max_over_trg, eps), max_over_trg)
    max_over_src = torch.where(max_over_src == 0, torch.full_like(max_over_src, eps), max_over_src)
    return corr * (corr / max_over_trg) * (corr / max_over_src)


def soft_argmax_flow(corr: torch.Tensor, beta: float = 0.02) -> torch.Tensor:
    """Dense target -> source flow `(B, 2, h, w)` in cell units from a correlation `(B, Ns, Nt)`.

    For each target cell, softmax over the source cells with temperature `beta`, take the expected source (x, y)
    on a linspace(-1, 1) grid and subtract the target's own position; the result is rescaled to cells.
    """
    b, ns, nt = corr.shape
    side = int(round(ns**0.5))
    if side * side != ns or ns != nt:
        raise ValueError(f"soft_argmax_flow needs square, equal grids, got Ns={ns}, Nt={nt}")
    prob = torch.softmax(corr / beta, dim=1)  # over the source axis (softmax subtracts the max)
    grid = torch.linspace(-1.0, 1.0, side, device=corr.device, dtype=corr.dtype)
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)  # (Ns,) positions of the source cells, row-major
    exp_x = torch.einsum("bst,s->bt", prob, xs)
    exp_y = torch.einsum("bst,s->bt", prob, ys)
    flow = torch.stack([exp_x - xs, exp_y - ys], dim=1)  # target cell t sits at (xs[t], ys[t])
    return flow.view(b, 2, side, side) * (side - 1) / 2.0


def hard_argmax_flow(corr: torch.Tensor) -> torch.Tensor:
    """Flow `(B, 2, h, w)` from the best-scoring source cell of each target cell (the raw-matching baseline)."""
    b, ns, nt = corr.shape
    side = int(round(ns**0.5))
    best = corr.argmax(dim=1)  # (B, Nt)
    tgt = torch.arange(nt, device=corr.device)
    dx = (best % side - tgt % side).float()
    dy = (torch.div(best, side, rounding_mode="floor") - torch.div(tgt, side, rounding_mode="floor")).float()
    return torch.stack([dx, dy], dim=1).view(b, 2, side, side)


class MultiscaleBlock(nn.Module):
    """Pre-norm block: attention over the positions of each level + MLP, then attention over levels + MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.attn_levels = Attention(dim, num_heads=heads, qkv_bias=True)
        self.norm4 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp2 = Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, levels, n, d = x.shape
        x = x.reshape(b * levels, n, d)
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        x = x.view(b, levels, n, d).transpose(1, 2).reshape(b * n, levels, d)
        x = x + self.attn_levels(self.norm3(x))
        x = x + self.mlp2(self.norm4(x))
        return x.view(b, n, levels, d).transpose(1, 2).contiguous()


class TransformerAggregator(nn.Module):
    """The CATs aggregator: tokens = correlation rows + projected appearance, with swapping and residuals.

    Pass 1 reads target-wise tokens `[C^T | P_trg]`, pass 2 source-wise tokens `[C' | P_src]`; both use the same
    blocks and head, and both add the *raw* correlation back. Returns the mean over levels, `(B, Ns, Nt)`.
    """

    def __init__(
        self,
        num_levels: int,
        side: int,
        proj_dim: int,
        depth: int = 1,
        heads: int = 6,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        n = side * side
        dim = n + proj_dim
        if dim % 2 or dim % heads:
            raise ValueError(
                f"token dim {dim} (cells {n} + proj_dim {proj_dim}) must be even and divisible by heads"
            )
        self.side = side
        self.pos_x = nn.Parameter(torch.zeros(1, num_levels, 1, side, dim // 2))
        self.pos_y = nn.Parameter(torch.zeros(1, num_levels, side, 1, dim // 2))
        trunc_normal_(self.pos_x, std=0.02)
        trunc_normal_(self.pos_y, std=0.02)
        self.blocks = nn.Sequential(*[MultiscaleBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.head = nn.Linear(dim, n)
        self.apply(self._init_linear)

    @staticmethod
    def _init_linear(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _pos(self) -> torch.Tensor:
        s = self.side
        pos = torch.cat([self.pos_x.expand(-1, -1, s, -1, -1), self.pos_y.expand(-1, -1, -1, s, -1)], dim=-1)
        return pos.flatten(2, 3)  # (1, L, N, dim)

    def _refine(self, rows: torch.Tensor, appearance: torch.Tensor) -> torch.Tensor:
        x = torch.cat([rows, appearance], dim=-1) + self._pos()
        return self.head(self.blocks(x))

    def forward(self, corr: torch.Tensor, src_proj: torch.Tensor, trg_proj: torch.Tensor) -> torch.Tensor:
        refined = self._refine(corr.transpose(-1, -2), trg_proj).transpose(-1, -2) + corr
        refined = self._refine(refined, src_proj) + corr
        return refined.mean(dim=1)
