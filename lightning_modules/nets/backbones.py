"""Backbone factory: timm models by name, plus a tiny CNN for CPU demos.

Pretrained weights are never downloaded unless the caller asks (`allow_download=True`): by default they are read
from a local file (`pretrained_path`) or from the Hugging Face cache that timm uses, and a clear error says how
to get them when neither has them.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

import lightning_modules.prs.nets  # noqa: F401  (registers the prs_* timm models for build_backbone)


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks and a flatten: the CPU-demo network of our SWAD spec (2 conv + linear head)."""

    def __init__(self, in_chans: int = 1, image_size: int = 16, width: int = 32) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"SmallCNN needs an image size divisible by 4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.num_features = 2 * width * (image_size // 4) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _cached_weight_file(model_name: str) -> str | None:
    """Path of `model_name`'s pretrained weights in the local Hugging Face / torch hub caches, if present."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        return None
    hf_hub_id = getattr(cfg, "hf_hub_id", None)
    if hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo_id = hf_hub_id.split("@")[0]
        revision = hf_hub_id.split("@")[1] if "@" in hf_hub_id else None
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(repo_id, filename, revision=revision)
            if isinstance(found, str):
                return found
    url = getattr(cfg, "url", None)
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def build_backbone(
    name: str,
    in_chans: int = 3,
    image_size: int = 224,
    pretrained: bool = False,
    pretrained_path: str | None = None,
    allow_download: bool = False,
    **kwargs,
) -> tuple[nn.Module, int]:
    """Return `(feature_extractor, feature_dim)`; the extractor maps images to pooled feature vectors.

    `name` is `small_cnn` or any timm model name (e.g. `resnet50.tv_in1k`, the torchvision ResNet-50 weights that
    the SWAD paper uses). With `pretrained`, weights come from `pretrained_path`, else the local cache; a download
    happens only with `allow_download=True`.
    """
    if name == "small_cnn":
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights; set pretrained: false")
        net = SmallCNN(in_chans=in_chans, image_size=image_size, **kwargs)
        return net, net.num_features
    if not timm.is_model(name):
        raise ValueError(
            f"unknown backbone {name!r}: use 'small_cnn' or a timm model name (timm.list_models())"
        )
    overlay = None
    if pretrained:
        weight_file = pretrained_path or _cached_weight_file(name)
        if pretrained_path and not Path(pretrained_path).is_file():
            raise FileNotFoundError(f"pretrained_path {pretrained_path!r} does not exist")
        if weight_file is None and not allow_download:
            raise FileNotFoundError(
                f"Pretrained weights for {name!r} are not on this machine and downloads are off.\n"
                f'  Either download them once where there is internet:  python -c "import timm; '
                f"timm.create_model('{name}', pretrained=True)\"  (they go to the Hugging Face cache, "
                f"~/.cache/huggingface/hub, which is then used offline),\n"
                f"  or point to a local file: --model.init_args.pretrained_path /path/to/model.safetensors,\n"
                f"  or allow the download: --model.init_args.allow_download true,\n"
                f"  or train from random init: --model.init_args.pretrained false."
            )
        if weight_file is not None:
            overlay = {"file": weight_file}
    net = timm.create_model(
        name,
        pretrained=pretrained,
        num_classes=0,
        in_chans=in_chans,
        pretrained_cfg_overlay=overlay,
        **kwargs,
    )
    return net, net.num_features
