"""Trainable parameters of one PPAP expert (peft LoRA rank 16, alpha 8 + the spec's BN / bias parameters) versus
the classifier it adapts, for the paper-scale guides (random weights: counts only, nothing is downloaded).

    python scripts/ppap_param_counts.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import timm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.ppap.nets import DEIT_LORA_TARGETS, RESNET_LORA_TARGETS, add_lora, count_parameters  # noqa: E402

GUIDES = {
    # name: (timm architecture, LoRA targets, add_lora options) as in configs/ppap/*_imagenet.yaml
    "ResNet-50": ("resnet50", RESNET_LORA_TARGETS, {"frozen_patterns": ["downsample", r"^fc\."]}),
    "DeiT-S": ("deit_small_patch16_224", DEIT_LORA_TARGETS, {"train_norm": False}),
}


def main() -> None:
    print("| guide | classifier params | trainable per expert | of which LoRA | ratio |")
    print("|---|---|---|---|---|")
    for label, (arch, targets, options) in GUIDES.items():
        model = timm.create_model(arch, pretrained=False)
        base = count_parameters(model)
        model = add_lora(model, targets, rank=16, alpha=8, **options)
        trainable = count_parameters(model, trainable_only=True)
        lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
        print(f"| {label} | {base:,} | {trainable:,} | {lora:,} | {trainable / base:.2%} |")


if __name__ == "__main__":
    main()
