"""PPAP on the digits: per-interval accuracy on noised inputs and guided-sample class accuracy of four guides.

Guides (all from the same code, `PPAPExpertModule`):
  offtheshelf   the frozen digits teacher, no tuning
  finetune      one noise-aware classifier, full fine-tuning with labels over all t (configs/ppap/digits_finetune)
  multi_experts 5 supervised experts, full fine-tuning with labels (configs/ppap/digits_multi_experts)
  ppap          5 LoRA experts distilled from the teacher on generated, unlabelled digits (configs/ppap/digits)

For each seed the three trained guides are fitted through the real CLI (``--seed_everything <seed>``), then:
- per-interval top-1 accuracy of each guide on the 400 held-out digits noised at t ~ U[lo, hi) of each of the
  five intervals (noise and t seeded by the seed, identical for every guide);
- guided sampling: ``--num_samples`` DDIM-``--steps`` samples of the digits diffusion model per guidance scale,
  sample i from the same noise and towards the same random class y_i for every guide; class accuracy of the
  samples as judged by an independent classifier (the FID digits classifier, a different training run from the
  teacher), FID of the samples against the held-out digits on that classifier's features, and IS on that
  classifier's logits (`build_inception_score("classifier")`, one split; not the Inception Score of the literature,
  at most 10 for 10 classes: it rewards confident and class-balanced samples).
Unguided samples (s = 0) give the chance-level reference. Writes ``<out>/results.json`` and ``<out>/results.md``.

Prerequisites (see docs/ppap.md): checkpoints/ppap/digits_teacher.ckpt, checkpoints/ppap/digits_diffusion.ckpt,
outputs/ppap/digits_generated/ (2,000 PNGs) and checkpoints/fid/digits_classifier.ckpt.

    python scripts/ppap_digits_results.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.ppap import PPAPDataModule  # noqa: E402
from lightning_modules.classifier import ImageClassifier  # noqa: E402
from lightning_modules.diffusion.fid import build_fid  # noqa: E402
from lightning_modules.diffusion.inception_score import build_inception_score  # noqa: E402
from lightning_modules.diffusion.router import IntervalRouter  # noqa: E402
from lightning_modules.diffusion.sampling import to_uint8  # noqa: E402
from lightning_modules.ppap.guidance import guided_sample  # noqa: E402
from lightning_modules.ppap.sampling import load_diffusion, load_guide, target_labels  # noqa: E402

# guide -> (config, extra CLI arguments)
TRAINED = {
    "finetune": ("configs/ppap/digits_finetune.yaml", []),
    "multi_experts": ("configs/ppap/digits_multi_experts.yaml", []),
    "ppap": ("configs/ppap/digits.yaml", []),
    # ablations of PPAP (not in the default table): full fine-tuning instead of LoRA, and distillation on the
    # real training digits (labels unused) instead of the generated ones
    "ppap_full": ("configs/ppap/digits.yaml", ["--model.init_args.tuning=full"]),
    "ppap_realdigits": ("configs/ppap/digits.yaml", ["--data.init_args.train=labelled"]),
}
GUIDES = ("offtheshelf", "finetune", "multi_experts", "ppap")


def fit_all(seed: int, log_root: Path, extra: list[str], names: list[str]) -> dict[str, Path]:
    """Train the three guides of one seed through the CLI, side by side (one thread each); return their last
    checkpoints (a run whose checkpoint exists is reused)."""
    ckpts, procs = {}, {}
    for name in names:
        config, own = TRAINED[name]
        run = f"{name}_seed{seed}"
        ckpts[name] = log_root / run / "version_0" / "checkpoints" / "last.ckpt"
        if ckpts[name].is_file():
            continue
        cmd = [
            sys.executable,
            "cli.py",
            "fit",
            "-c",
            config,
            f"--seed_everything={seed}",
            f"--trainer.logger.init_args.save_dir={log_root}",
            f"--trainer.logger.init_args.name={run}",
            "--trainer.logger.init_args.version=0",
            *own,
            *extra,
        ]
        print("$", " ".join(cmd), flush=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    start = time.time()
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise RuntimeError(f"training {name} (seed {seed}) failed with exit code {proc.returncode}")
    if procs:
        print(f"  seed {seed}: trained {sorted(procs)} in {time.time() - start:.0f} s", flush=True)
    return ckpts


@torch.no_grad()
def interval_accuracy(guide, images, labels, alphas, seed: int) -> list[float]:
    """Top-1 accuracy of ``guide(x_t, t)`` on noised images, per uniform interval of the 5-expert router."""
    router = IntervalRouter.uniform(len(alphas), 5)
    accs = []
    for e in range(5):
        g = torch.Generator().manual_seed(seed * 1_000_003 + e)
        t = router.draw(e, len(labels), generator=g)
        noise = torch.randn(images.shape, generator=g)
        a = alphas[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * images + (1 - a).sqrt() * noise
        preds = torch.cat([guide(x_t[i : i + 200], t[i : i + 200]).argmax(1) for i in range(0, len(t), 200)])
        accs.append((preds == labels).float().mean().item())
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--guides", nargs="+", default=list(GUIDES), choices=["offtheshelf", *TRAINED])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    parser.add_argument("--num_samples", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (PPAP official: 25)")
    parser.add_argument("--diffusion_ckpt", default="checkpoints/ppap/digits_diffusion.ckpt")
    parser.add_argument("--judge_ckpt", default="checkpoints/fid/digits_classifier.ckpt")
    parser.add_argument("--log_root", default="logs/ppap_results")
    parser.add_argument("--out", default="docs/results/ppap")
    parser.add_argument("--fit_args", nargs="*", default=["--trainer.enable_progress_bar=false"])
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    torch.set_num_threads(1)  # a shared 2-core machine: one thread avoids oversubscription
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    log_root = ROOT / args.log_root

    dm = PPAPDataModule(train="labelled", labelled="digits", image_size=8, channels=1)
    dm.setup("test")
    images = torch.stack([dm.eval_set[i][0] for i in range(len(dm.eval_set))])
    labels = torch.tensor([int(dm.eval_set[i][1]) for i in range(len(dm.eval_set))])
    diffusion = load_diffusion(str(ROOT / args.diffusion_ckpt))
    alphas = diffusion.scheduler.alphas_cumprod.float()
    judge = ImageClassifier.load_from_checkpoint(str(ROOT / args.judge_ckpt), map_location="cpu").eval()
    fid = build_fid("classifier", str(ROOT / args.judge_ckpt))
    inception = build_inception_score("classifier", str(ROOT / args.judge_ckpt), splits=1)
    real = to_uint8(images)

    results: dict = {"config": vars(args), "runs": []}
    for seed in args.seeds:
        trained = [g for g in args.guides if g != "offtheshelf"]
        ckpts = fit_all(seed, log_root, args.fit_args, sorted({*trained, "ppap"}))
        guides = {
            name: load_guide([str(ckpts["ppap"])], offtheshelf=True)
            if name == "offtheshelf"
            else load_guide([str(ckpts[name])])
            for name in args.guides
        }
        ppap_module = torch.load(ckpts["ppap"], map_location="cpu", weights_only=False)
        run = {"seed": seed, "interval_acc": {}, "sample_acc": {}, "fid": {}, "is": {}, "sample_seconds": {}}
        for name in args.guides:
            run["interval_acc"][name] = interval_accuracy(guides[name], images, labels, alphas, seed)
        indices = list(range(args.num_samples))
        y = target_labels(indices, 10, seed)
        seeds = [seed * 1_000_000 + i for i in indices]
        for name in ("unguided", *args.guides):
            for scale in [0.0] if name == "unguided" else args.scales:
                start = time.time()
                x = guided_sample(
                    diffusion,
                    None if name == "unguided" else guides[name],
                    y,
                    seeds,
                    scale,
                    args.steps,
                    "ddim",
                    0.0,
                )
                key = f"{name}@{scale:g}"
                run["sample_seconds"][key] = time.time() - start
                run["sample_acc"][key] = (judge(x).argmax(1) == y).float().mean().item()
                fid.update(real, real=True)
                fid.update(to_uint8(x), real=False)
                run["fid"][key] = float(fid.compute())
                fid.reset()
                inception.update(to_uint8(x))
                with torch.random.fork_rng(devices=[]):  # IS shuffles with the global RNG: leave it untouched
                    run["is"][key] = float(inception.compute()[0])
                inception.reset()
                print(
                    f"seed {seed} {key}: acc {run['sample_acc'][key]:.3f} fid {run['fid'][key]:.2f} "
                    f"is {run['is'][key]:.2f}",
                    flush=True,
                )
        hp = ppap_module["hyper_parameters"]
        run["ppap_hparams"] = {
            k: hp[k] for k in ("lora_rank", "lora_alpha", "expert_schedule", "expert_init")
        }
        results["runs"].append(run)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        write_markdown(results, out / "results.md")  # after every seed: an interrupted run keeps its tables


def _fmt(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def write_markdown(results: dict, path: Path) -> None:
    runs = results["runs"]
    cfg = results["config"]
    lines = [
        "# PPAP digits results",
        "",
        f"Command: `python scripts/ppap_digits_results.py --seeds {' '.join(map(str, cfg['seeds']))} "
        f"--guides {' '.join(cfg.get('guides', GUIDES))} --out {cfg['out']}` "
        f"(seeds {cfg['seeds']}; mean ± std over seeds; shared 2-core CPU).",
        "",
        "## Accuracy on noised held-out digits (400 images), per interval of t",
        "",
        "| guide | [0,200) | [200,400) | [400,600) | [600,800) | [800,1000) | mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in cfg.get("guides", GUIDES):
        per = [[r["interval_acc"][name][e] for r in runs] for e in range(5)]
        means = [statistics.mean(r["interval_acc"][name]) for r in runs]
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in per) + f" | {_fmt(means)} |")
    lines += [
        "",
        "## Guided samples: class accuracy by the independent judge, and FID (judge features)",
        "",
        f"{cfg['num_samples']} samples per cell, DDIM-{cfg['steps']}, random target classes; FID against the 400 "
        "held-out digits (few samples: FID is biased upwards, compare within the table only).",
        "",
    ]
    has_is = all("is" in r for r in runs)  # results.json files written before the IS column have none
    if has_is:
        lines[-1:-1] = [
            "IS: the Inception Score formula on the judge's logits, one split per cell (at most 10, the number of "
            "classes; not comparable with Inception-v3 IS).",
        ]
    lines += (
        ["| guide | scale | judged accuracy | FID | IS (judge) |", "|---|---|---|---|---|"]
        if has_is
        else ["| guide | scale | judged accuracy | FID |", "|---|---|---|---|"]
    )
    keys = list(runs[0]["sample_acc"])
    for key in keys:
        name, scale = key.split("@")
        acc = [r["sample_acc"][key] for r in runs]
        fid = [r["fid"][key] for r in runs]
        row = f"| {name} | {scale} | {_fmt(acc)} | {_fmt(fid)} |"
        lines.append(row + (f" {_fmt([r['is'][key] for r in runs])} |" if has_is else ""))
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
