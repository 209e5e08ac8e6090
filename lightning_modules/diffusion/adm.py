"""OpenAI's ADM U-Net (guided-diffusion) as a diffusers `UNet2DModel`, and a converter for its checkpoints.

PPAP guides the unconditional ADM-256 of Dhariwal & Nichol ("Diffusion Models Beat GANs on Image Synthesis",
2021; checkpoint ``256x256_diffusion_uncond.pt`` of github.com/openai/guided-diffusion). Its architecture maps
one to one onto diffusers' blocks, so litlab keeps a single denoiser class (`UNet2DModel`) and converts the
weights instead of carrying a second U-Net implementation:

=============================================  ==================================================================
ADM (``UNetModel``)                             diffusers (`UNet2DModel`)
=============================================  ==================================================================
``time_embed.{0,2}`` after a cos|sin embedding  ``time_embedding.linear_{1,2}``, ``flip_sin_to_cos``, shift 0
``input_blocks.0`` conv                         ``conv_in``
ResBlock, scale-shift norm                      `ResnetBlock2D`, ``resnet_time_scale_shift="scale_shift"``
ResBlock ``down=True`` (``resblock_updown``)    the block's ``downsamplers.0``: a ResnetBlock2D with average pool
ResBlock ``up=True``                            ``upsamplers.0``: a ResnetBlock2D with nearest upsampling
AttentionBlock (1x1 conv ``qkv``)               `Attention` (``to_q/k/v`` linears), ``num_head_channels`` = head dim
``middle_block`` ResBlock/Attention/ResBlock     ``mid_block`` (with a GroupNorm before its attention)
``out.{0,2}``                                   ``conv_norm_out``, ``conv_out``
=============================================  ==================================================================

Every module computes the same function (GroupNorm(32), SiLU, zero-padding 3x3 convs, softmax attention with
scale 1/sqrt(head dim)); ``tests/test_adm.py`` checks the converted network against an independent functional
forward over the ADM weights. The ``qkv`` rows are ordered per head ([q_h, k_h, v_h] for each head h: the
"legacy" order of the released 256x256 models) or q|k|v first (``use_new_attention_order``, the 64x64 model).

With ``learn_sigma`` the network outputs 2C channels: epsilon and the variance interpolation ``v`` in [-1, 1]
(Nichol & Dhariwal's learned range, ``Sigma = exp(frac log beta_t + (1 - frac) log beta~_t)``, frac = (v+1)/2);
`LearnedSigmaUNet` returns epsilon as ``.sample`` (the contract of every sampler here) and ``v`` as
``.variance_values``.

Supported: unconditional models with ``resblock_updown``, ``use_scale_shift_norm``, ``num_head_channels`` > 0 and
``channel_mult[0] == 1`` (all released 64/128/256 ADM models but the 512 one, whose first multiplier is 0.5). Other
flags raise a clear error instead of a silently different network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.utils import BaseOutput

ADM_256_UNCOND_URL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
)

# guided-diffusion README, "256x256 model (unconditional)": MODEL_FLAGS --attention_resolutions 32,16,8
# --class_cond False --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear
# --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True
# --use_scale_shift_norm True (channel_mult defaults to 1,1,2,2,4,4 at 256 px)
ADM_256_UNCOND: dict[str, Any] = {
    "image_size": 256,
    "num_channels": 256,
    "num_res_blocks": 2,
    "channel_mult": (1, 1, 2, 2, 4, 4),
    "attention_resolutions": (32, 16, 8),
    "num_head_channels": 64,
    "learn_sigma": True,
    "resblock_updown": True,
    "use_scale_shift_norm": True,
    "use_new_attention_order": False,
    "dropout": 0.0,
}

ADM_PRESETS = {"adm256_uncond": ADM_256_UNCOND}


@dataclass
class LearnedSigmaOutput(BaseOutput):
    """``sample``: predicted epsilon (C channels); ``variance_values``: ADM's ``v`` (C channels, ~[-1, 1])."""

    sample: torch.Tensor
    variance_values: torch.Tensor


class LearnedSigmaUNet(UNet2DModel):
    """A `UNet2DModel` with 2C output channels read as ``[epsilon, v]`` (ADM's ``learn_sigma``)."""

    def forward(self, sample: torch.Tensor, timestep, class_labels=None, return_dict: bool = True):
        out = super().forward(sample, timestep, class_labels=class_labels).sample
        eps, v = out.chunk(2, dim=1)
        return LearnedSigmaOutput(sample=eps, variance_values=v)


def _check_flags(flags: dict[str, Any]) -> dict[str, Any]:
    flags = {**ADM_256_UNCOND, **flags}
    unsupported = {
        "resblock_updown": (flags["resblock_updown"], True),
        "use_scale_shift_norm": (flags["use_scale_shift_norm"], True),
    }
    for name, (value, needed) in unsupported.items():
        if bool(value) != needed:
            raise ValueError(f"ADM conversion supports {name}={needed} only, got {value!r}")
    if int(flags["num_head_channels"]) <= 0:
        raise ValueError(
            "ADM conversion needs num_head_channels > 0 (a fixed head width, as diffusers' blocks)"
        )
    mult = tuple(flags["channel_mult"])
    if mult[0] != 1 or any(int(m) != m for m in mult):
        raise ValueError(f"ADM conversion needs integer channel_mult starting at 1, got {mult}")
    if flags["image_size"] % 2 ** (len(mult) - 1):
        raise ValueError(f"image_size {flags['image_size']} is not divisible by 2^{len(mult) - 1}")
    return flags


def attention_levels(flags: dict[str, Any]) -> list[bool]:
    """Whether each level has attention: ADM puts it where the feature map side is in attention_resolutions."""
    size = int(flags["image_size"])
    return [
        size // 2**level in set(flags["attention_resolutions"]) for level in range(len(flags["channel_mult"]))
    ]


def adm_unet_kwargs(flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """`UNet2DModel` arguments (without sizes and channels in/out) for ADM flags (defaults: ADM-256 uncond)."""
    flags = _check_flags(flags or {})
    attn = attention_levels(flags)
    mc = int(flags["num_channels"])
    return {
        "block_out_channels": tuple(mc * int(m) for m in flags["channel_mult"]),
        "layers_per_block": int(flags["num_res_blocks"]),
        "down_block_types": tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn),
        "up_block_types": tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)),
        "downsample_type": "resnet",
        "upsample_type": "resnet",
        "resnet_time_scale_shift": "scale_shift",
        "attention_head_dim": int(flags["num_head_channels"]),
        "norm_num_groups": 32,
        "attn_norm_num_groups": 32,  # the mid-block attention has a GroupNorm in ADM
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,  # ADM's embedding is [cos | sin]
        "freq_shift": 0,
        "dropout": float(flags["dropout"]),
    }


# ---------------------------------------------------------------------------------------------- conversion
_RES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


class _Reads(dict):
    """A state dict that records which keys were read, so that no tensor of a checkpoint is silently dropped."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> torch.Tensor:
        self.read.add(key)
        if key not in self:
            raise ValueError(
                f"the ADM checkpoint has no {key!r}, which these flags need: pass the checkpoint's MODEL_FLAGS"
            )
        return super().__getitem__(key)


def _resblock(src: dict, prefix: str, dst: dict, target: str) -> None:
    for old, new in _RES.items():
        for p in ("weight", "bias"):
            key = f"{prefix}.{old}.{p}"
            if key in src:
                dst[f"{target}.{new}.{p}"] = src[key]


def _attention(src: dict, prefix: str, dst: dict, target: str, head_channels: int, new_order: bool) -> None:
    dst[f"{target}.group_norm.weight"] = src[f"{prefix}.norm.weight"]
    dst[f"{target}.group_norm.bias"] = src[f"{prefix}.norm.bias"]
    weight = src[f"{prefix}.qkv.weight"].squeeze(-1)  # (3C, C, 1) conv1d -> (3C, C)
    bias = src[f"{prefix}.qkv.bias"]
    channels = weight.shape[1]
    heads = channels // head_channels
    if new_order:  # rows: [q (all heads) | k | v]
        parts_w, parts_b = weight.chunk(3, dim=0), bias.chunk(3, dim=0)
    else:  # legacy rows: for each head, [q_h | k_h | v_h]
        w = weight.reshape(heads, 3, head_channels, channels)
        b = bias.reshape(heads, 3, head_channels)
        parts_w = [w[:, i].reshape(channels, channels) for i in range(3)]
        parts_b = [b[:, i].reshape(channels) for i in range(3)]
    for name, w, b in zip(("to_q", "to_k", "to_v"), parts_w, parts_b, strict=True):
        dst[f"{target}.{name}.weight"] = w.contiguous()
        dst[f"{target}.{name}.bias"] = b.contiguous()
    dst[f"{target}.to_out.0.weight"] = src[f"{prefix}.proj_out.weight"].squeeze(-1)
    dst[f"{target}.to_out.0.bias"] = src[f"{prefix}.proj_out.bias"]


def convert_adm_state_dict(src: dict[str, torch.Tensor], flags: dict[str, Any] | None = None) -> dict:
    """An ADM ``UNetModel`` state dict -> the state dict of ``UNet2DModel(**adm_unet_kwargs(flags))``."""
    flags = _check_flags(flags or {})
    if "label_emb.weight" in src:
        raise ValueError(
            "this is a class-conditional ADM checkpoint (it has label_emb); litlab's diffusion modules and PPAP "
            "use the unconditional model (256x256_diffusion_uncond.pt)"
        )
    src = _Reads({k: v.float() for k, v in src.items()})  # fp16 checkpoints run in fp32 here
    head, new_order = int(flags["num_head_channels"]), bool(flags["use_new_attention_order"])
    attn = attention_levels(flags)
    levels, blocks = len(flags["channel_mult"]), int(flags["num_res_blocks"])
    dst: dict[str, torch.Tensor] = {}
    for i, name in ((0, "linear_1"), (2, "linear_2")):
        for p in ("weight", "bias"):
            dst[f"time_embedding.{name}.{p}"] = src[f"time_embed.{i}.{p}"]
    for p in ("weight", "bias"):
        dst[f"conv_in.{p}"] = src[f"input_blocks.0.0.{p}"]
        dst[f"conv_norm_out.{p}"] = src[f"out.0.{p}"]
        dst[f"conv_out.{p}"] = src[f"out.2.{p}"]
    k = 1  # input_blocks.0 is conv_in
    for level in range(levels):
        for j in range(blocks):
            _resblock(src, f"input_blocks.{k}.0", dst, f"down_blocks.{level}.resnets.{j}")
            if attn[level]:
                _attention(
                    src, f"input_blocks.{k}.1", dst, f"down_blocks.{level}.attentions.{j}", head, new_order
                )
            k += 1
        if level != levels - 1:
            _resblock(src, f"input_blocks.{k}.0", dst, f"down_blocks.{level}.downsamplers.0")
            k += 1
    _resblock(src, "middle_block.0", dst, "mid_block.resnets.0")
    _attention(src, "middle_block.1", dst, "mid_block.attentions.0", head, new_order)
    _resblock(src, "middle_block.2", dst, "mid_block.resnets.1")
    k = 0
    for up, level in enumerate(reversed(range(levels))):
        for j in range(blocks + 1):
            _resblock(src, f"output_blocks.{k}.0", dst, f"up_blocks.{up}.resnets.{j}")
            nxt = 1
            if attn[level]:
                _attention(
                    src, f"output_blocks.{k}.1", dst, f"up_blocks.{up}.attentions.{j}", head, new_order
                )
                nxt = 2
            if level and j == blocks:
                _resblock(src, f"output_blocks.{k}.{nxt}", dst, f"up_blocks.{up}.upsamplers.0")
            k += 1
    unused = sorted(set(src) - src.read)
    if unused:  # weights of blocks the flags do not describe: a different architecture, never a silent drop
        raise ValueError(
            f"{len(unused)} ADM tensors have no place in the U-Net these flags describe, e.g. {unused[:3]}; "
            "pass the checkpoint's MODEL_FLAGS"
        )
    return dst


ADM_LAYOUT_HINT = (
    "An ADM checkpoint is the state dict that guided-diffusion saves (torch.save(model.state_dict())), e.g. "
    f"256x256_diffusion_uncond.pt from {ADM_256_UNCOND_URL} (2.1 GB; download it on a machine with internet "
    "access; nothing is downloaded at run time)."
)


def load_adm_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an ADM checkpoint file (a plain state dict), with one clear error when it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ADM checkpoint {str(path)!r} not found. {ADM_LAYOUT_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated downloads and other files
        raise ValueError(f"{str(path)!r} is not a readable ADM checkpoint ({e}). {ADM_LAYOUT_HINT}") from e
    if isinstance(state, dict) and "state_dict" in state and "time_embed.0.weight" not in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or "time_embed.0.weight" not in state:
        raise ValueError(
            f"{str(path)!r} is not an ADM state dict (no time_embed.0.weight). {ADM_LAYOUT_HINT}"
        )
    return state


def build_adm_unet(flags: dict[str, Any] | None = None, in_channels: int = 3) -> UNet2DModel:
    """The diffusers U-Net of an ADM configuration (random weights; `convert_adm_state_dict` fills them)."""
    full = _check_flags(flags or {})
    cls = LearnedSigmaUNet if full["learn_sigma"] else UNet2DModel
    out = 2 * in_channels if full["learn_sigma"] else in_channels
    return cls(
        sample_size=int(full["image_size"]),
        in_channels=in_channels,
        out_channels=out,
        **adm_unet_kwargs(full),
    )
