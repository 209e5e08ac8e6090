"""Training-step time of the PRS layers in the convolution form vs the attention form, same network and batch.

    python benchmarks/prs_step_time.py                                   # prs_vit_tiny, CIFAR 32x32, batch 32
    python benchmarks/prs_step_time.py --model prs_vit_digits --image_size 16 --channels 1 --batch 64
    python benchmarks/prs_step_time.py --steps 10 --repeats 3 --threads 2 --device cuda

One training step = forward, cross-entropy, backward and an AdamW step, on a random batch. The same weights are
timed with every layer in the conv form (one conv2d per layer) and with every layer switched to the attention
form (K^2-head attention over all tokens, gate at its switch value), interleaved `--repeats` times; the median
time per step of each form and their ratio (attention / conv) are printed. Run it on an otherwise idle machine for
absolute times; the ratio is what the docs report.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402

import lightning_modules.prs.nets  # noqa: E402, F401  (registers the prs_* models)


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, device: str) -> float:
    """Seconds per training step, after one untimed step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="prs_vit_tiny")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conv = timm.create_model(args.model, num_classes=args.num_classes, in_chans=args.channels).to(args.device)
    attention = copy.deepcopy(conv)
    for layer in attention.reparam_layers():
        layer.reparameterize()
    x = torch.randn(args.batch, args.channels, args.image_size, args.image_size, device=args.device)
    y = torch.randint(0, args.num_classes, (args.batch,), device=args.device)
    times: dict[str, list[float]] = {"conv": [], "attention": []}
    for _ in range(args.repeats):
        times["conv"].append(step_time(conv, x, y, args.steps, args.device))
        times["attention"].append(step_time(attention, x, y, args.steps, args.device))
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = (args.image_size // conv.stem[-1].stride[0]) ** 2
    print(
        f"{args.model}, {args.image_size}x{args.image_size} input ({tokens} tokens), batch {args.batch}, "
        f"{args.device}, threads {torch.get_num_threads()}, median of {args.repeats} x {args.steps} steps"
    )
    print(f"conv form:      {1000 * med['conv']:.1f} ms/step")
    print(f"attention form: {1000 * med['attention']:.1f} ms/step")
    print(f"ratio attention / conv: {med['attention'] / med['conv']:.2f}x")
    return {**med, "ratio": med["attention"] / med["conv"]}


if __name__ == "__main__":
    main()
