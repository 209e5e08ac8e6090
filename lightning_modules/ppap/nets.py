"""Guide networks for PPAP: an off-the-shelf classifier behind an input adapter, and its peft LoRA experts.

Every guide maps images in [-1, 1] (the diffusion model's space) to class logits. `InputAdapter` does what the
classifier expects: resize, then ``(x + 1) / 2`` normalised by ``mean`` / ``std`` (ImageNet statistics for timm
models), or nothing at all (our digits classifiers are trained on [-1, 1] inputs).

LoRA comes from peft (`inject_adapter_in_model`): ``W x + (alpha / r) * B A x`` with A Kaiming-uniform and B zero,
the same scale in training and in the merged weights (the official code's unmerged LoRALinear forgets alpha / r,
which our spec asks not to copy). For a convolution peft's A is a ``k x k`` convolution to ``r`` channels and B a
``1 x 1`` convolution back, rank ``r``; the official ConvLoRA factorises the flattened kernel with rank ``r * k``
instead (documented in docs/ppap.md).
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from lightning_modules.nets.backbones import _cached_weight_file

# LoRA targets named by the spec, as regular expressions over the classifier's module names (timm naming).
RESNET_LORA_TARGETS = (
    r"conv1",
    r"layer\d+\.\d+\.conv[12]",
)  # stem conv1; conv1 and conv2 of every bottleneck
DEIT_LORA_TARGETS = (r"blocks\.\d+\.attn\.(qkv|proj)",)
SMALL_CNN_LORA_TARGETS = (
    r"backbone\.features\.\d+",
)  # every conv of the foundation's SmallCNN (+ head stays)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputAdapter(nn.Module):
    """[-1, 1] images -> the classifier's input: optional bilinear resize, then optional mean/std normalisation.

    Args:
        size: side the classifier expects (None keeps the size).
        mean, std: per-channel statistics of [0, 1] images; None feeds the [-1, 1] images unchanged.
    """

    def __init__(
        self, size: int | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.size = size
        self.normalize = mean is not None
        if self.normalize:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.normalize:
            x = ((x + 1) / 2 - self.mean) / self.std
        return x


class GuideNet(nn.Module):
    """``classifier(adapter(x))``: the logits of a classifier for images in [-1, 1]."""

    def __init__(self, adapter: InputAdapter, classifier: nn.Module) -> None:
        super().__init__()
        self.adapter, self.classifier = adapter, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.adapter(x))


@contextmanager
def own_hyperparameters() -> Iterator[None]:
    """Let modules loaded inside another module's ``__init__`` record their own hyperparameters.

    While LightningCLI instantiates a module it publishes that module's arguments in a context variable, and
    every ``save_hyperparameters()`` called meanwhile (also by a checkpoint loaded inside ``__init__``) would
    record them instead of its own.
    """
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def load_classifier(
    classifier: str | None = None,
    classifier_ckpt: str | None = None,
    num_classes: int = 1000,
    in_chans: int = 3,
    pretrained: bool = True,
    pretrained_path: str | None = None,
) -> nn.Module:
    """The off-the-shelf classifier (logits), from exactly one of:

    - ``classifier``: a timm model name with its ``num_classes``-way head; pretrained weights from
      ``pretrained_path`` or the local Hugging Face cache, never downloaded;
    - ``classifier_ckpt``: a checkpoint of our `ImageClassifier` (``backbone`` + ``head``, e.g. the digits teacher).
    """
    if (classifier is None) == (classifier_ckpt is None):
        raise ValueError(
            "give exactly one of classifier (a timm name) and classifier_ckpt (an ImageClassifier ckpt)"
        )
    if classifier_ckpt is not None:
        from lightning_modules.classifier import ImageClassifier

        if not Path(classifier_ckpt).is_file():
            raise FileNotFoundError(
                f"classifier checkpoint {classifier_ckpt!r} does not exist. For the digits demo train the teacher "
                "first: python cli.py fit -c configs/ppap/digits_teacher.yaml"
            )
        with own_hyperparameters():
            trained = ImageClassifier.load_from_checkpoint(classifier_ckpt, map_location="cpu")
        return nn.Sequential(
            OrderedDict(backbone=trained.backbone, dropout=trained.dropout, head=trained.head)
        ).float()
    if not timm.is_model(classifier):
        raise ValueError(f"unknown classifier {classifier!r}: a timm model name (timm.list_models())")
    overlay = None
    if pretrained:
        if pretrained_path and not Path(pretrained_path).is_file():
            raise FileNotFoundError(f"pretrained_path {pretrained_path!r} does not exist")
        weight_file = pretrained_path or _cached_weight_file(classifier)
        if weight_file is None:
            raise FileNotFoundError(
                f"Pretrained weights for {classifier!r} are not on this machine and nothing is downloaded at run "
                f"time. Where there is internet run: python -c \"import timm; timm.create_model('{classifier}', "
                f'pretrained=True)" (fills ~/.cache/huggingface/hub), or pass '
                f"--model.init_args.pretrained_path /path/to/model.safetensors."
            )
        overlay = {"file": weight_file}
    return timm.create_model(
        classifier,
        pretrained=pretrained,
        num_classes=num_classes,
        in_chans=in_chans,
        pretrained_cfg_overlay=overlay,
    )


def lora_target_names(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Names of the Conv2d / Linear modules whose full name matches one of ``patterns`` (``re.fullmatch``)."""
    compiled = [re.compile(p) for p in patterns]
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and any(c.fullmatch(name) for c in compiled)
    ]
    if not names:
        raise ValueError(
            f"no Conv2d/Linear module of the classifier matches the LoRA targets {list(patterns)}"
        )
    return names


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))


def add_lora(
    model: nn.Module,
    targets: Sequence[str],
    rank: int = 16,
    alpha: float = 8.0,
    dropout: float = 0.0,
    train_norm: bool = True,
    train_bias: bool = True,
    frozen_patterns: Sequence[str] = (),
) -> nn.Module:
    """Inject peft LoRA into ``model`` (in place) and set what trains: LoRA A and B, and optionally the
    BatchNorm parameters (``train_norm``: batch norms only, not LayerNorm/GroupNorm) and every bias
    (``train_bias``), except parameters whose name matches one of ``frozen_patterns`` (``re.search``; e.g.
    ``downsample`` for ResNet's shortcut BN, ``fc`` for its head). Everything else is frozen."""
    names = lora_target_names(model, targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    model = inject_adapter_in_model(config, model)
    frozen = [re.compile(p) for p in frozen_patterns]
    batch_norm_params = {
        f"{name}.{pname}" if name else pname
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for pname, _ in module.named_parameters(recurse=False)
    }
    for name, param in model.named_parameters():
        trainable = "lora_A" in name or "lora_B" in name
        if not trainable and not any(f.search(name) for f in frozen):
            trainable = (train_norm and name in batch_norm_params) or (train_bias and name.endswith("bias"))
        param.requires_grad_(trainable)
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every LoRA update merged into its base weights (same outputs, faster)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
