"""MEME cost report: parameters per expert, MACs per denoiser forward and sampling throughput per configuration.

    python scripts/meme_report.py                                  # the digits configurations, CPU
    python scripts/meme_report.py --paper --no-throughput          # + the FFHQ paper-scale denoisers (params, MACs)
    python scripts/meme_report.py --out docs/results/meme/report.md

Every configuration is built by the real CLI (`LitCLI(run=False)`) from `configs/meme/*.yaml`. MACs are counted
with `torch.utils.flop_counter.FlopCounterMode` for one denoiser forward at batch 1 (MACs = FLOPs / 2) at a timestep
in each expert's interval (a MEME step runs one expert); attention runs through diffusers' plain `AttnProcessor` so
its matrix products are counted (PyTorch's fused CPU attention kernel is not). Throughput: images per second of a
full DDIM run (``--steps`` steps, ``--batch`` images) after one warm-up run, the median of ``--repeats``. Paper-scale
denoisers are built on 64x64x3 inputs, the shape of the VQ-f4 latents of 256-px images, without the autoencoder.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import LitCLI  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]"]
DIGITS = {
    "small U-Net (1 iU-Net, rho 0.5)": ["digits_small_unet"],
    "large U-Net (1 UNet2DModel + attention)": ["digits_large_unet"],
    "same-architecture experts (4 x rho 0.5)": ["digits_same_arch_experts"],
    "MEME (4 iU-Nets, conv_low_t)": [],
    "MEME reversed (conv_high_t)": ["digits_reversed"],
}
PAPER = {
    "FFHQ MEME (4 iU-Nets)": ("ffhq", []),
    "FFHQ LDM-L (1 UNet2DModel, preset ldm)": ("ffhq", ["ffhq_large_unet"]),
}
PAPER_ARGS = ["--model.init_args.vae_path=null", "--data.init_args.image_size=64"]  # 64x64x3 = VQ-f4 latents


def build(configs: list[str], extra: list[str] | None = None):
    """The `MEMEModule` of ``configs/meme/<c>.yaml`` files (in order) through the real CLI, on CPU."""
    args: list[str] = []
    for c in configs:
        args += ["-c", str(ROOT / "configs" / "meme" / f"{c}.yaml")]
    cli = LitCLI(args=[*args, *QUIET, "--trainer.accelerator=cpu", *(extra or [])], run=False)
    return cli.model.eval()


def experts_of(module) -> list[torch.nn.Module]:
    net = module.net
    return list(net.experts) if hasattr(net, "experts") else [net]


def count_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def macs_per_forward(net: torch.nn.Module, shape: tuple[int, ...], t: int) -> float:
    """MACs of one forward at batch 1 (FLOPs / 2), attention through the countable plain processor."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.randn(1, *shape), torch.tensor([t]))
    return counter.get_total_flops() / 2


def throughput(module, steps: int, batch: int, repeats: int) -> float:
    """Images per second of a full DDIM run of ``steps`` steps at ``batch`` images (after one warm-up run)."""
    indices = list(range(batch))
    module.generate(indices, num_steps=steps)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        module.generate(indices, num_steps=steps)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def report_row(name: str, module, args, with_throughput: bool) -> dict:
    experts = experts_of(module)
    router = module.router
    macs = [
        macs_per_forward(e, module.latent_shape, sum(router.interval(i)) // 2 if len(experts) > 1 else 500)
        for i, e in enumerate(experts)
    ]
    steps = module.steps_per_expert(args.steps, "ddim")
    row = {
        "name": name,
        "params": [count_params(e) for e in experts],
        "macs": macs,
        # MACs of a whole DDIM run per image, divided by the steps: what one step costs on average
        "macs_per_step": sum(m * s for m, s in zip(macs, steps, strict=True)) / sum(steps),
        "steps_per_expert": steps,
    }
    if with_throughput:
        row["images_per_s"] = throughput(module, args.steps, args.batch, args.repeats)
    return row


def fmt_params(values: list[int]) -> str:
    if len(values) == 1:
        return f"{values[0] / 1e6:.3f}M"
    return f"{len(values)} x ({', '.join(f'{v / 1e6:.3f}' for v in values)})M = {sum(values) / 1e6:.3f}M"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps for throughput and step counts")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paper", action="store_true", help="add the paper-scale FFHQ denoisers")
    parser.add_argument("--no-throughput", dest="throughput", action="store_false")
    parser.add_argument("--out", default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, overlays in DIGITS.items():
        rows.append(report_row(name, build(["digits", *overlays]), args, args.throughput))
    if args.paper:
        for name, (base, overlays) in PAPER.items():
            rows.append(report_row(name, build([base, *overlays], PAPER_ARGS), args, False))
    head = "| configuration | parameters | MACs per forward (per expert) | mean MACs per DDIM step | DDIM steps per expert |"
    lines = [head + (" images/s |" if args.throughput else ""), "|---" * (5 + args.throughput) + "|"]
    for r in rows:
        macs = ", ".join(f"{m / 1e6:.2f}M" if m < 1e9 else f"{m / 1e9:.2f}G" for m in r["macs"])
        mean = r["macs_per_step"]
        cells = [
            r["name"],
            fmt_params(r["params"]),
            macs,
            f"{mean / 1e6:.2f}M" if mean < 1e9 else f"{mean / 1e9:.2f}G",
            "/".join(map(str, r["steps_per_expert"])),
        ]
        if args.throughput:
            cells.append(f"{r['images_per_s']:.1f}" if "images_per_s" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    text = (
        f"DDIM {args.steps} steps; throughput at batch {args.batch}, {args.threads} thread(s), median of "
        f"{args.repeats} after a warm-up run, float32 on CPU ({torch.__version__}).\n\n" + "\n".join(lines)
    )
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
