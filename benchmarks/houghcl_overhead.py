"""Hough voting overhead per DenseCL training step: time of a step with Hough pairing / with arg-max pairing.

    python benchmarks/houghcl_overhead.py [--setups digits resnet18_112] [--repeats 20]

Each setup builds one DenseCLModule, then times full training steps (forward, loss, backward, optimizer step,
momentum update and enqueue) alternating the pair rule on the same batch, so slow drift of a shared machine hits
both rules alike. Also times the pair rule alone on a (B, 49, 49) similarity batch (ResNet-50's 7x7 map).
Reports medians and the ratio (target at most 1.05x). The pair-quality logging is switched off here
(`log_pair_rules: []`), as it would add the other rule's cost to both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from lightning_modules.houghcl.module import DenseCLModule
from lightning_modules.houghcl.pairs import argmax_pairs, build_pair_rule

SETUPS = {
    # name: (backbone, backbone kwargs, input shape, batch)
    "digits": ("small_cnn", {"width": 16}, (1, 32, 32), 128),
    "resnet18_112": ("resnet18", {}, (3, 112, 112), 16),
}
HOUGH = {"vote": "topk", "topk": 5, "smooth_sigma": 1.0, "flip": "vote_both"}


def step_times(setup: str, repeats: int) -> dict[str, float]:
    backbone, kwargs, shape, batch = SETUPS[setup]
    torch.manual_seed(0)
    module = DenseCLModule(
        backbone=backbone,
        backbone_kwargs=kwargs,
        input_shape=shape,
        proj_hidden_dim=128,
        proj_output_dim=64,
        queue_size=4 * batch,
        log_pair_rules=(),
    )
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    views = [torch.rand(batch, *shape), torch.rand(batch, *shape)]
    flips = torch.rand(batch, 2) < 0.5
    data = {"views": views, "labels": torch.zeros(batch, dtype=torch.long), "flips": flips}
    rules = {"argmax": build_pair_rule("argmax"), "hough": build_pair_rule("hough", HOUGH)}
    times: dict[str, list[float]] = {name: [] for name in rules}
    for i in range(repeats + 2):
        for name, rule in rules.items():
            module.pair_rule = rule
            start = time.perf_counter()
            per_image, q_feat, _ = module.dense_losses(data)
            loss = per_image.mean() + F.cross_entropy(module.probe(q_feat.detach()), data["labels"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            module.enqueue(*module._pending_keys)
            module.momentum_update()
            if i >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def rule_times(batch: int, size: int, repeats: int) -> dict[str, float]:
    sim = F.normalize(torch.randn(batch, size * size, 128), dim=2)
    sim = sim @ sim.transpose(1, 2)
    rules = {"argmax": argmax_pairs, "hough": build_pair_rule("hough", HOUGH)}
    out = {}
    for name, rule in rules.items():
        rule(sim, (size, size))
        t = []
        for _ in range(repeats):
            start = time.perf_counter()
            rule(sim, (size, size))
            t.append(time.perf_counter() - start)
        out[name] = statistics.median(t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: less noise on a shared CPU)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("| setup | arg-max step (ms) | Hough step (ms) | ratio |")
    print("|---|---|---|---|")
    for setup in args.setups:
        t = step_times(setup, args.repeats)
        print(
            f"| {setup} | {1e3 * t['argmax']:.1f} | {1e3 * t['hough']:.1f} | {t['hough'] / t['argmax']:.3f} |"
        )
    r = rule_times(32, 7, 50)
    print(
        f"\npair rule alone, batch 32, 7x7 map: arg-max {1e3 * r['argmax']:.3f} ms, "
        f"Hough {1e3 * r['hough']:.3f} ms"
    )


if __name__ == "__main__":
    main()
