"""An independent, functional forward of OpenAI's ADM U-Net over its own state-dict names (test reference).

Written from the architecture description (Dhariwal & Nichol 2021, guided-diffusion's module names), in plain
torch.nn.functional, with no diffusers code: it is what `lightning_modules.diffusion.adm`'s converted
`UNet2DModel` must reproduce. `adm_state_dict` makes a random checkpoint with the official key names and shapes
(zero-initialised layers get random values too, so every weight matters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _levels(flags):
    size = flags["image_size"]
    return [size // 2**i in set(flags["attention_resolutions"]) for i in range(len(flags["channel_mult"]))]


def adm_state_dict(
    flags: dict, in_channels: int = 3, seed: int = 0, meta: bool = False
) -> dict[str, torch.Tensor]:
    """Random ADM weights under the official names (input_blocks.*, middle_block.*, output_blocks.*, out.*).

    ``meta``: shapes only (meta tensors), for counting the parameters of full-size models.
    """
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def rand(*shape, scale=None):
        if meta:
            return torch.empty(*shape, device="meta")
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
        return torch.randn(*shape, generator=g) * (scale if scale is not None else fan_in**-0.5)

    def norm(prefix, ch):
        sd[f"{prefix}.weight"] = 1 + rand(ch, scale=0.1)
        sd[f"{prefix}.bias"] = rand(ch, scale=0.1)

    def conv(prefix, cin, cout, k):
        sd[f"{prefix}.weight"] = rand(cout, cin, k, k)
        sd[f"{prefix}.bias"] = rand(cout, scale=0.1)

    def res(prefix, cin, cout, emb):
        norm(f"{prefix}.in_layers.0", cin)
        conv(f"{prefix}.in_layers.2", cin, cout, 3)
        sd[f"{prefix}.emb_layers.1.weight"] = rand(2 * cout, emb)
        sd[f"{prefix}.emb_layers.1.bias"] = rand(2 * cout, scale=0.1)
        norm(f"{prefix}.out_layers.0", cout)
        conv(f"{prefix}.out_layers.3", cout, cout, 3)
        if cin != cout:
            conv(f"{prefix}.skip_connection", cin, cout, 1)

    def attn(prefix, ch):
        norm(f"{prefix}.norm", ch)
        sd[f"{prefix}.qkv.weight"] = rand(3 * ch, ch, 1)
        sd[f"{prefix}.qkv.bias"] = rand(3 * ch, scale=0.1)
        sd[f"{prefix}.proj_out.weight"] = rand(ch, ch, 1)
        sd[f"{prefix}.proj_out.bias"] = rand(ch, scale=0.1)

    mc, mult, nb = flags["num_channels"], flags["channel_mult"], flags["num_res_blocks"]
    emb = 4 * mc
    sd["time_embed.0.weight"], sd["time_embed.0.bias"] = rand(emb, mc), rand(emb, scale=0.1)
    sd["time_embed.2.weight"], sd["time_embed.2.bias"] = rand(emb, emb), rand(emb, scale=0.1)
    conv("input_blocks.0.0", in_channels, mc, 3)
    attn_at = _levels(flags)
    ch, chans, k = mc, [mc], 1
    for level, m in enumerate(mult):
        for _ in range(nb):
            res(f"input_blocks.{k}.0", ch, mc * m, emb)
            ch = mc * m
            if attn_at[level]:
                attn(f"input_blocks.{k}.1", ch)
            chans.append(ch)
            k += 1
        if level != len(mult) - 1:
            res(f"input_blocks.{k}.0", ch, ch, emb)
            chans.append(ch)
            k += 1
    res("middle_block.0", ch, ch, emb)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch, emb)
    k = 0
    for level in reversed(range(len(mult))):
        for i in range(nb + 1):
            skip = chans.pop()
            res(f"output_blocks.{k}.0", ch + skip, mc * mult[level], emb)
            ch = mc * mult[level]
            j = 1
            if attn_at[level]:
                attn(f"output_blocks.{k}.1", ch)
                j = 2
            if level and i == nb:
                res(f"output_blocks.{k}.{j}", ch, ch, emb)
            k += 1
    norm("out.0", ch)
    conv("out.2", ch, (2 if flags["learn_sigma"] else 1) * in_channels, 3)
    return sd


def _gn(sd, prefix, x):
    return F.group_norm(x, 32, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=1e-5)


def _res(sd, prefix, x, emb, resample=None):
    h = F.silu(_gn(sd, f"{prefix}.in_layers.0", x))
    if resample == "down":
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
    elif resample == "up":
        h, x = (
            F.interpolate(h, scale_factor=2, mode="nearest"),
            F.interpolate(x, scale_factor=2, mode="nearest"),
        )
    h = F.conv2d(h, sd[f"{prefix}.in_layers.2.weight"], sd[f"{prefix}.in_layers.2.bias"], padding=1)
    e = F.linear(F.silu(emb), sd[f"{prefix}.emb_layers.1.weight"], sd[f"{prefix}.emb_layers.1.bias"])
    scale, shift = e[:, :, None, None].chunk(2, dim=1)
    h = _gn(sd, f"{prefix}.out_layers.0", h) * (1 + scale) + shift
    h = F.conv2d(F.silu(h), sd[f"{prefix}.out_layers.3.weight"], sd[f"{prefix}.out_layers.3.bias"], padding=1)
    if f"{prefix}.skip_connection.weight" in sd:
        x = F.conv2d(x, sd[f"{prefix}.skip_connection.weight"], sd[f"{prefix}.skip_connection.bias"])
    return x + h


def _attn(sd, prefix, x, head_channels, new_order):
    b, c, hh, ww = x.shape
    flat = _gn(sd, f"{prefix}.norm", x).reshape(b, c, -1)
    qkv = F.conv1d(flat, sd[f"{prefix}.qkv.weight"], sd[f"{prefix}.qkv.bias"])  # (b, 3c, T)
    heads = c // head_channels
    if new_order:
        q, k, v = (t.reshape(b * heads, head_channels, -1) for t in qkv.chunk(3, dim=1))
    else:
        q, k, v = qkv.reshape(b * heads, 3 * head_channels, -1).split(head_channels, dim=1)
    w = torch.softmax(torch.einsum("nct,ncs->nts", q, k) / math.sqrt(head_channels), dim=-1)
    a = torch.einsum("nts,ncs->nct", w, v).reshape(b, c, -1)
    out = F.conv1d(a, sd[f"{prefix}.proj_out.weight"], sd[f"{prefix}.proj_out.bias"])
    return x + out.reshape(b, c, hh, ww)


def adm_forward(sd: dict, flags: dict, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The ADM U-Net's output for images ``x`` at timesteps ``t`` (all 2C channels with learn_sigma)."""
    mc, mult, nb = flags["num_channels"], flags["channel_mult"], flags["num_res_blocks"]
    hc, new = flags["num_head_channels"], flags["use_new_attention_order"]
    half = mc // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    emb = F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])
    emb = F.linear(F.silu(emb), sd["time_embed.2.weight"], sd["time_embed.2.bias"])
    attn_at = _levels(flags)
    h = F.conv2d(x, sd["input_blocks.0.0.weight"], sd["input_blocks.0.0.bias"], padding=1)
    hs, k = [h], 1
    for level in range(len(mult)):
        for _ in range(nb):
            h = _res(sd, f"input_blocks.{k}.0", h, emb)
            if attn_at[level]:
                h = _attn(sd, f"input_blocks.{k}.1", h, hc, new)
            hs.append(h)
            k += 1
        if level != len(mult) - 1:
            h = _res(sd, f"input_blocks.{k}.0", h, emb, "down")
            hs.append(h)
            k += 1
    h = _res(sd, "middle_block.0", h, emb)
    h = _attn(sd, "middle_block.1", h, hc, new)
    h = _res(sd, "middle_block.2", h, emb)
    k = 0
    for level in reversed(range(len(mult))):
        for i in range(nb + 1):
            h = _res(sd, f"output_blocks.{k}.0", torch.cat([h, hs.pop()], dim=1), emb)
            j = 1
            if attn_at[level]:
                h = _attn(sd, f"output_blocks.{k}.1", h, hc, new)
                j = 2
            if level and i == nb:
                h = _res(sd, f"output_blocks.{k}.{j}", h, emb, "up")
            k += 1
    h = F.silu(_gn(sd, "out.0", h))
    return F.conv2d(h, sd["out.2.weight"], sd["out.2.bias"], padding=1)
