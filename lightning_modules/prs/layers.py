"""A KxK convolution that can be rewritten, at any moment, as K^2-head self-attention with the same output.

`ReparamAttention` follows the construction of Cordonnier et al. (ICLR 2020, "On the Relationship between
Self-Attention and Convolutional Layers"): one head per kernel offset Delta_h (K^2 heads), head h attends only to
the token at `pos(i) + Delta_h`, and its value/output projections W_V^h W_O^h are the kernel slice at Delta_h. So
the *same parameters* are a convolution (kernel[:, :, Delta_h] = (W_V^h W_O^h)^T) and a multi-head attention.

Forms (the `attention_mode` buffer, part of the state dict, so a checkpoint restores the form):
- conv form: one `F.conv2d` with the composed kernel (fast, zero padding, stride 1).
- attention form: head h's attention is `g_h * P_h + (1 - g_h) * softmax(q_h k_h^T / sqrt(d) + B_h)` where
  * P_h is the hard relative positional attention of the construction (P_h[i, j] = 1 iff pos(j) - pos(i) =
    Delta_h; rows whose target falls off the image are zero, exactly like zero padding);
  * B_h[i, j] = -alpha_h ||pos(j) - pos(i) - Delta_h'||^2 is Cordonnier's learnable quadratic positional
    encoding (alpha_h and the centre Delta_h' learnable, initialised at alpha and Delta_h), so content
    attention starts local;
  * g_h = clamp(gate_h, 0, 1) * gate_scale: a learnable per-head gate (ConViT's GPSA idea, clamped with a
    straight-through gradient) times a scale that a schedule may anneal from 1 to 0 (`anneal(progress)`).
  `reparameterize()` sets gate_h = `switch_gate` (default 1) and gate_scale = 1: the attention form then computes
  exactly the convolution (up to float rounding). Afterwards the hard relative attention fades out, through the
  learned gate and, when the schedule anneals (`ramp_epochs` of the callback), down to zero: the layer then is
  plain multi-head self-attention with a learnable relative positional encoding (Cordonnier's layer).

Why not the softmax-only construction (P_h = softmax(B_h) with large alpha): softmax can neither reach an exact
one-hot row nor express zero padding (border rows renormalise over in-image tokens), and a saturated softmax has
no gradient. The gate keeps the switch exact and the content branch trainable.

Optimizer state: every parameter (value, output, query/key, alpha, centres, gate) is created at construction and
is in the optimizer from step 0. Before the switch the query/key/positional/gate parameters take no part in the
forward pass, so their `.grad` stays None and Adam/AdamW skip them (no moment update, no weight decay); their state
starts lazily at the first step after the switch. Nothing in the optimizer or LR schedule changes at the switch.
Under DDP that means parameters unused for a while: use `strategy: ddp_find_unused_parameters_true`.

Contract used by `callbacks.reparam.ReparameterizationSchedule`: `is_attention` (bool property),
`reparameterize()` (switch to the attention form; idempotent) and, optional, `anneal(progress)` (progress in [0, 1]
since the switch: the hard relative attention is scaled by 1 - progress).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def kernel_offsets(kernel_size: int) -> torch.Tensor:
    """(K^2, 2) integer offsets (dy, dx) in conv2d kernel order: head h = ky * K + kx has (ky - p, kx - p)."""
    p = kernel_size // 2
    ky, kx = torch.meshgrid(torch.arange(kernel_size), torch.arange(kernel_size), indexing="ij")
    return torch.stack([ky.flatten() - p, kx.flatten() - p], dim=1)


def grid_positions(height: int, width: int) -> torch.Tensor:
    """(H*W, 2) token positions (y, x) in row-major order (the order of `x.flatten(2)`)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], dim=1)


def shift_attention(height: int, width: int, kernel_size: int) -> torch.Tensor:
    """(K^2, N, N) hard relative attention: [h, i, j] = 1 iff pos(j) - pos(i) = Delta_h (zero rows off-image)."""
    pos = grid_positions(height, width)
    rel = pos[None, :, :] - pos[:, None, :]  # (N, N, 2): pos(j) - pos(i)
    offsets = kernel_offsets(kernel_size)
    return (rel[None] == offsets[:, None, None, :]).all(dim=-1).float()


class ReparamAttention(nn.Module):
    """KxK convolution / K^2-head self-attention over a (B, H*W, C) token grid; see the module docstring.

    Args:
        dim: input channels.
        out_dim: output channels (default `dim`).
        kernel_size: K, odd; K^2 heads.
        head_dim: value width per head (default max(1, dim // K^2)). The conv kernel slice at each offset is
            W_V^h W_O^h, so its rank is at most `head_dim` (a full conv needs head_dim >= min(dim, out_dim)).
        qk_dim: query/key width per head (default `head_dim`).
        alpha: initial sharpness of the quadratic positional prior of the content branch (0: none, plain ViT).
        switch_gate: gate value set by `reparameterize()`; 1 keeps the function unchanged at the switch, 0 drops
            the convolution at once (pure content attention).
        bias: output bias (the convolution's bias).
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        kernel_size: int = 3,
        head_dim: int | None = None,
        qk_dim: int | None = None,
        alpha: float = 4.0,
        switch_gate: float = 1.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(
                f"kernel_size must be odd and positive (same-size zero padding), got {kernel_size}"
            )
        if not 0.0 <= switch_gate <= 1.0:
            raise ValueError(f"switch_gate must be in [0, 1], got {switch_gate}")
        self.dim, self.out_dim, self.kernel_size = dim, out_dim or dim, kernel_size
        self.num_heads = kernel_size**2
        self.head_dim = head_dim or max(1, dim // self.num_heads)
        self.qk_dim = qk_dim or self.head_dim
        self.switch_gate = float(switch_gate)
        inner = self.num_heads * self.head_dim
        self.value = nn.Linear(dim, inner, bias=False)  # no value bias: zero padding pads the values with 0
        self.proj = nn.Linear(inner, self.out_dim, bias=bias)
        self.qk = nn.Linear(dim, 2 * self.num_heads * self.qk_dim, bias=False)
        offsets = kernel_offsets(kernel_size).float()
        self.centers = nn.Parameter(offsets.clone())  # Delta_h' of the quadratic positional prior
        self.alpha = nn.Parameter(torch.full((self.num_heads,), float(alpha)))
        self.gate = nn.Parameter(torch.ones(self.num_heads))
        self.register_buffer("attention_mode", torch.tensor(False))
        self.register_buffer("gate_scale", torch.tensor(1.0))
        self._shift_cache: dict[tuple, torch.Tensor] = {}

    # ----- contract -------------------------------------------------------------------------------------------
    @property
    def is_attention(self) -> bool:
        """True once the layer computes self-attention (restored from the state dict)."""
        return bool(self.attention_mode)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Switch to the attention form; the output is unchanged when `switch_gate` is 1. Idempotent."""
        if self.is_attention:
            return
        self.gate.fill_(self.switch_gate)
        self.gate_scale.fill_(1.0)
        self.attention_mode.fill_(True)

    @torch.no_grad()
    def anneal(self, progress: float) -> None:
        """Scale the hard relative attention by 1 - progress (clipped to [0, 1]); 1 = the layer is pure attention."""
        self.gate_scale.fill_(1.0 - min(max(float(progress), 0.0), 1.0))

    # ----- conv view ------------------------------------------------------------------------------------------
    def conv_weight(self) -> torch.Tensor:
        """(out_dim, dim, K, K) kernel of the conv form: kernel[:, :, ky, kx] = (W_V^h W_O^h)^T, h = ky*K + kx."""
        w_v = self.value.weight.view(self.num_heads, self.head_dim, self.dim)
        w_o = self.proj.weight.view(self.out_dim, self.num_heads, self.head_dim)
        kernel = torch.einsum("ohd,hdc->och", w_o, w_v)
        return kernel.reshape(self.out_dim, self.dim, self.kernel_size, self.kernel_size)

    @torch.no_grad()
    def load_conv(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Factorise a conv kernel (out_dim, dim, K, K) into W_V^h W_O^h by truncated SVD per offset.

        Exact when every kernel slice has rank <= head_dim (always when head_dim >= min(dim, out_dim)).
        """
        expected = (self.out_dim, self.dim, self.kernel_size, self.kernel_size)
        if tuple(weight.shape) != expected:
            raise ValueError(f"conv weight of shape {tuple(weight.shape)}, expected {expected}")
        slices = weight.reshape(self.out_dim, self.dim, self.num_heads).permute(2, 1, 0)  # (h, dim, out)
        u, s, vh = torch.linalg.svd(slices.double(), full_matrices=False)
        r = min(self.head_dim, s.shape[-1])
        root = s[:, :r].sqrt()
        w_v = torch.zeros(self.num_heads, self.head_dim, self.dim, dtype=torch.float64)
        w_o = torch.zeros(self.num_heads, self.head_dim, self.out_dim, dtype=torch.float64)
        w_v[:, :r] = (u[:, :, :r] * root[:, None, :]).transpose(1, 2)
        w_o[:, :r] = vh[:, :r] * root[:, :, None]
        self.value.weight.copy_(w_v.reshape(-1, self.dim))
        self.proj.weight.copy_(w_o.permute(2, 0, 1).reshape(self.out_dim, -1))
        if bias is not None and self.proj.bias is not None:
            self.proj.bias.copy_(bias)

    # ----- forward --------------------------------------------------------------------------------------------
    def _shift(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        key = (height, width, str(device))
        if key not in self._shift_cache:
            self._shift_cache[key] = shift_attention(height, width, self.kernel_size).to(device)
        return self._shift_cache[key]

    def position_bias(self, height: int, width: int) -> torch.Tensor:
        """(K^2, N, N) B_h[i, j] = -alpha_h ||pos(j) - pos(i) - Delta_h'||^2."""
        pos = grid_positions(height, width).to(self.alpha.device, self.alpha.dtype)
        rel = pos[None, :, :] - pos[:, None, :]
        dist = (rel[None] - self.centers[:, None, None, :]).pow(2).sum(-1)
        return -self.alpha[:, None, None] * dist

    def attention_maps(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, K^2, N, N) attention of the attention form (what the heads use after the switch)."""
        b, n, _ = x.shape
        q, k = self.qk(x).view(b, n, 2, self.num_heads, self.qk_dim).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.qk_dim) + self.position_bias(height, width)
        gate = self.gate + (self.gate.clamp(0.0, 1.0) - self.gate).detach()  # clamp, straight-through grad
        gate = (gate * self.gate_scale).to(x.dtype)[None, :, None, None]
        return gate * self._shift(height, width, x.device) + (1.0 - gate) * logits.softmax(dim=-1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Map tokens (B, H*W, dim) on an (H, W) grid to (B, H*W, out_dim)."""
        height, width = size
        b, n, c = x.shape
        if n != height * width or c != self.dim:
            raise ValueError(f"expected tokens (B, {height * width}, {self.dim}), got {tuple(x.shape)}")
        if not self.is_attention:
            image = x.transpose(1, 2).reshape(b, c, height, width)
            out = F.conv2d(image, self.conv_weight(), self.proj.bias, padding=self.kernel_size // 2)
            return out.flatten(2).transpose(1, 2)
        v = self.value(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, h, N, d)
        heads = self.attention_maps(x, height, width) @ v
        return self.proj(heads.transpose(1, 2).reshape(b, n, -1))

    def extra_repr(self) -> str:
        form = "attention" if self.is_attention else "conv"
        return (
            f"dim={self.dim}, out_dim={self.out_dim}, kernel_size={self.kernel_size}, heads={self.num_heads}, "
            f"head_dim={self.head_dim}, form={form}"
        )
