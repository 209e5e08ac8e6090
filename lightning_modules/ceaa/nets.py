"""Text encoders for the bi-encoder: a transformers AutoModel with attention-masked mean pooling.

Mean pooling + L2 normalisation is what all-MiniLM-L6-v2 was trained with (its modules.json: Transformer, mean
Pooling, Normalize), so the packaged MiniLM gives sentence-transformers' embeddings zero-shot.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from datamodules.ceaa import resolve_model_path

POOLINGS = ("mean", "cls")


def build_transformer(model_path: str | None, model_config: dict[str, Any] | None) -> nn.Module:
    """A pretrained AutoModel from a local folder / hub cache / the packaged MiniLM, or a random one from a config."""
    from transformers import AutoConfig, AutoModel

    if (model_path is None) == (model_config is None):
        raise ValueError("give exactly one of model_path (pretrained, local) or model_config (random init)")
    if model_path is not None:
        return AutoModel.from_pretrained(resolve_model_path(model_path), add_pooling_layer=False)
    cfg = dict(model_config)
    if "model_type" not in cfg:
        raise ValueError(
            "model_config needs a 'model_type', e.g. {'model_type': 'bert', 'hidden_size': 32, ...}"
        )
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:  # architectures without a pooling layer argument
        return AutoModel.from_config(config)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token vectors that the attention mask keeps."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1e-9)


class TextEncoder(nn.Module):
    """``AutoModel`` -> pooled vector (``mean`` or ``cls``); `forward` L2-normalises when ``normalize``."""

    def __init__(self, model_path: str | None, model_config: dict | None, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.transformer = build_transformer(model_path, model_config)
        self.pooling = pooling

    @property
    def hidden_size(self) -> int:
        return int(self.transformer.config.hidden_size)

    def pooled(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        keys = ("input_ids", "attention_mask", "token_type_ids")
        hidden = self.transformer(**{k: v for k, v in inputs.items() if k in keys}).last_hidden_state
        return hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, inputs["attention_mask"])

    def forward(self, inputs: dict[str, torch.Tensor], normalize: bool = True) -> torch.Tensor:
        pooled = self.pooled(inputs)
        return F.normalize(pooled, dim=-1) if normalize else pooled
