"""PPAP guidance overhead: time of guided / unguided DDIM sampling with the same diffusion model and noise.

    python benchmarks/ppap_guidance_overhead.py [--setups digits] [--repeats 5] [--batch 100] [--steps 25]

Each repeat samples one batch unguided (`sampling.sample`) and then guided (`guidance.guided_sample` with a
`NoiseRangeGuide` of 5 LoRA experts, merged or not), back to back, so slow drift of a shared machine hits both
alike; reports medians and the ratio guided / unguided. A guided step costs the U-Net forward plus one forward
and one backward of the guiding expert.

Setups (random weights: timing only):
- ``digits``: the digits demo's tiny U-Net (0.65M parameters) on 1x8x8, the 21k-parameter small-CNN experts;
- ``resnet50_64``: the tiny U-Net on 3x64x64 with ResNet-50 LoRA experts (a heavy guide on a small model);
- ``adm256_resnet50``: the paper's pair, ADM-256 uncond (552.8M parameters, `unet_preset: adm256_uncond`, learned
  sigma) with ResNet-50 LoRA experts at 256 px. Meant for a GPU (``--device cuda --batch 100``); on a CPU use
  ``--batch 1 --steps 2 --repeats 1``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import timm
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.diffusion.module import DiffusionModule  # noqa: E402
from lightning_modules.diffusion.router import IntervalRouter  # noqa: E402
from lightning_modules.diffusion.sampling import sample  # noqa: E402
from lightning_modules.diffusion.schedulers import build_sampler  # noqa: E402
from lightning_modules.nets.backbones import SmallCNN  # noqa: E402
from lightning_modules.ppap.guidance import NoiseRangeGuide, guided_sample  # noqa: E402
from lightning_modules.ppap.nets import (  # noqa: E402
    RESNET_LORA_TARGETS,
    SMALL_CNN_LORA_TARGETS,
    GuideNet,
    InputAdapter,
    add_lora,
    merged_copy,
)


def build(setup: str) -> tuple[DiffusionModule, list[nn.Module]]:
    torch.manual_seed(0)
    if setup == "digits":
        diffusion = DiffusionModule(input_shape=(1, 8, 8), unet_preset="tiny")
        cnn = SmallCNN(1, 8)
        base = nn.Sequential(
            OrderedDict(backbone=cnn, dropout=nn.Identity(), head=nn.Linear(cnn.num_features, 10))
        )
        targets = SMALL_CNN_LORA_TARGETS
        adapter = InputAdapter()
    elif setup == "resnet50_64":
        diffusion = DiffusionModule(input_shape=(3, 64, 64), unet_preset="tiny")
        base = timm.create_model("resnet50", pretrained=False)
        targets = RESNET_LORA_TARGETS
        adapter = InputAdapter(None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    elif setup == "adm256_resnet50":
        diffusion = DiffusionModule(input_shape=(3, 256, 256), unet_preset="adm256_uncond", learn_sigma=True)
        base = timm.create_model("resnet50", pretrained=False)
        targets = RESNET_LORA_TARGETS
        adapter = InputAdapter(None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    else:
        raise ValueError(f"unknown setup {setup!r}")
    experts = []
    for _ in range(5):
        net = add_lora(copy.deepcopy(base), targets, 16, 8)
        for name, p in net.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p, std=0.01)
        experts.append(GuideNet(adapter, net).eval())
    return diffusion.eval(), experts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setups", nargs="+", default=["digits"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"device {device}, threads {args.threads}, batch {args.batch}, DDIM-{args.steps}, "
        f"{args.repeats} repeats (medians)"
    )
    print("| setup | unguided s | guided (LoRA) s | guided (merged) s | ratio LoRA | ratio merged |")
    print("|---|---|---|---|---|---|")
    for setup in args.setups:
        diffusion, experts = build(setup)
        diffusion, experts = diffusion.to(device), [e.to(device) for e in experts]
        router = IntervalRouter.uniform(1000, 5)
        guides = {
            "lora": NoiseRangeGuide(experts, router),
            "merged": NoiseRangeGuide([merged_copy(e) for e in experts], router),
        }
        seeds = list(range(args.batch))
        labels = torch.arange(args.batch, device=device) % 10
        times: dict[str, list[float]] = {"unguided": [], "lora": [], "merged": []}
        scheduler = build_sampler(diffusion.scheduler, "ddim")

        def synced() -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter()

        for _ in range(args.repeats + 1):  # the first round warms up and is dropped
            start = synced()
            with torch.no_grad():
                sample(diffusion.net, scheduler, seeds, diffusion.latent_shape, args.steps, device=device)
            times["unguided"].append(synced() - start)
            for kind, guide in guides.items():
                start = synced()
                guided_sample(diffusion, guide, labels, seeds, 7.5, args.steps, "ddim", 0.0)
                times[kind].append(synced() - start)
        med = {k: statistics.median(v[1:]) for k, v in times.items()}
        print(
            f"| {setup} | {med['unguided']:.3f} | {med['lora']:.3f} | {med['merged']:.3f} | "
            f"{med['lora'] / med['unguided']:.2f} | {med['merged'] / med['unguided']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
