"""Smoke-run each landed method's paper-scale config for a few hundred steps and print steps/s and peak memory.

    python benchmarks/smoke.py                 # on the GPU: bf16 mixed precision, paper-size inputs
    python benchmarks/smoke.py --cpu           # tiny step counts and inputs, on the CPU (what the tests run)
    python benchmarks/smoke.py --only swad_pacs --steps 300

The config runs as it is (callbacks, checkpointing, logger into a temporary folder) except that validation
is off, so the figures are training steps. Data: each entry writes a synthetic dataset in the real on-disk layout
(random images), so the real loaders, transforms and models run without the real data; the numbers are speed and
memory, not accuracy. Pretrained weights are off (random init). Results are printed as a table and written to
--out as JSON.

Entries (paper-scale configs): SWAD on PACS (ResNet-50); SimCLR on CIFAR-10 without and with ScoreCL's pair
weighting (ResNet-18, batch 256; the ScoreCL score network is pretrained for `SCORE_PRETRAIN_STEPS` steps
instead of 20k, before the timed steps); ANT with uncertainty weighting on the ADM U-Net at FFHQ 256 px (batch
10); PPAP's ResNet-50 LoRA experts on generated 256-px PNGs (batch 256, the first expert's steps). In --cpu mode the inputs are tiny (32 px CIFAR batch 4, 16 px faces on the `tiny` U-Net preset, ResNet-18
for SWAD) so the CPU run checks the plumbing, not the speed.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import LitCLI  # noqa: E402


def domainbed_tree(
    root: Path, folder: str, domains: list[str], classes: int, per_class: int, size: int
) -> Path:
    rng = np.random.default_rng(0)
    for d in domains:
        for c in range(classes):
            out = root / folder / d / f"class_{c:03d}"
            out.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(out / f"{i}.jpg")
    return root


@dataclass
class Entry:
    """A config, how to build fake data for it, and the overrides for GPU and CPU runs.

    ``tweak(cli, tmp, cpu)`` adjusts the instantiated objects where no CLI key reaches (e.g. an init arg of a
    callback that is not the last one in ``trainer.callbacks``).
    """

    config: str
    make_data: Callable[[Path, bool], list[str]]  # (tmp dir, cpu) -> extra CLI args
    gpu_args: list[str] = field(default_factory=list)
    cpu_args: list[str] = field(default_factory=list)
    tweak: Callable[[LitCLI, Path, bool], None] | None = None


def swad_pacs_data(tmp: Path, cpu: bool) -> list[str]:
    from datamodules.domainbed import DATASETS

    info = DATASETS["PACS"]
    root = domainbed_tree(
        tmp, info.folder, list(info.domains), info.num_classes, 3 if cpu else 20, 64 if cpu else 256
    )
    return [f"--data.root={root}"]


def cifar10_data(tmp: Path, cpu: bool) -> list[str]:
    """CIFAR-10's python-pickle release (cifar-10-batches-py/data_batch_1..5, test_batch) with random images."""
    rng = np.random.default_rng(0)
    folder = tmp / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    n = 4 if cpu else 2000
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh)
    return [f"--data.init_args.root={tmp}"]


def ffhq_data(tmp: Path, cpu: bool) -> list[str]:
    """FFHQ's layout (images1024x1024/00000/00000.png ...) with random images at the training size."""
    rng = np.random.default_rng(0)
    folder = tmp / "images1024x1024" / "00000"
    folder.mkdir(parents=True, exist_ok=True)
    n, size = (40, 16) if cpu else (200, 256)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return [f"--data.init_args.root={tmp}", "--data.init_args.num_eval_images=4"]


def cifar100_data(tmp: Path, cpu: bool) -> list[str]:
    """CIFAR-100's python-pickle release (cifar-100-python/{train,test,meta}) with random images."""
    rng = np.random.default_rng(0)
    folder = tmp / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    n = 16 if cpu else 2000
    for split in ("train", "test"):
        entry = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": (np.arange(n) % 100).tolist(),
            b"coarse_labels": (np.arange(n) % 20).tolist(),
        }
        with open(folder / split, "wb") as fh:
            pickle.dump(entry, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [b"c%d" % i for i in range(100)]}, fh)
    return [f"--data.init_args.root={tmp}"]


def qg_squad_data(tmp: Path, cpu: bool) -> list[str]:
    """lmqg/qg_squad's JSON lines ({train,validation,test}.jsonl) with template paragraphs at SQuAD-like length."""
    rng = np.random.default_rng(0)
    tmp.mkdir(parents=True, exist_ok=True)
    words = [
        "the",
        "river",
        "castle",
        "king",
        "museum",
        "bridge",
        "festival",
        "city",
        "was",
        "built",
        "in",
        "year",
        "by",
        "people",
        "of",
        "old",
        "town",
    ]
    for split, n in (("train", 16 if cpu else 2000), ("validation", 4), ("test", 4)):
        with open(tmp / f"{split}.jsonl", "w") as fh:
            for i in range(n):
                answer = str(1600 + i % 400)
                body = " ".join(rng.choice(words, 24 if cpu else 120))
                sentence = f"The bridge was built in {answer}."
                row = {
                    "paragraph": f"{body} {sentence}",
                    "paragraph_answer": f"{body} The bridge was built in <hl> {answer} <hl>.",
                    "sentence": sentence,
                    "answer": answer,
                    "question": "When was the bridge built?",
                }
                fh.write(json.dumps(row) + "\n")
    return [f"--data.init_args.root={tmp}"]


def ppap_imagenet_data(tmp: Path, cpu: bool) -> list[str]:
    """PPAP's inputs: generated PNGs in shard folders (<root>/0000/000000.png ...) and ImageNet val (val/<wnid>/)."""
    rng = np.random.default_rng(0)
    n, size = (8, 32) if cpu else (512, 256)
    generated = tmp / "generated" / "0000"
    generated.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
            generated / f"{i:06d}.png"
        )
    for wnid in ("n01440764", "n01443537"):
        folder = tmp / "imagenet" / "val" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    return [
        f"--data.init_args.generated_root={tmp / 'generated'}",
        f"--data.init_args.labelled_root={tmp / 'imagenet'}",
    ]


# T5-large's shape (the paper-scale config's model) with random weights: no checkpoint is needed for speed/memory.
T5_LARGE = "{model_type: t5, d_model: 1024, d_ff: 4096, d_kv: 64, num_heads: 16, num_layers: 24}"
T5_TINY = "{model_type: t5, d_model: 32, d_ff: 64, d_kv: 8, num_heads: 4, num_layers: 2}"
QG_COMMON = [
    "--model.init_args.model_path=null",
    "--model.init_args.tokenizer=packaged:all-MiniLM-L6-v2",
    "--data.init_args.tokenizer=packaged:all-MiniLM-L6-v2",
    "--data.init_args.num_workers=0",
]

SCORE_PRETRAIN_STEPS = {"gpu": 50, "cpu": 2}


def short_score_pretraining(cli: LitCLI, tmp: Path, cpu: bool) -> None:
    """ScoreCL: a few score-net pretraining steps (the config's 20k would dominate), saved into the temp dir."""
    (weighting,) = [cb for cb in cli.trainer.callbacks if hasattr(cb, "pretrain_steps")]
    weighting.pretrain_steps = SCORE_PRETRAIN_STEPS["cpu" if cpu else "gpu"]
    weighting.save_path = str(tmp / "score_net.pt")
    if cpu:
        weighting.score_batch_size = 8


SSL_GPU = ["--model.init_args.pretrained=false", "--data.init_args.num_workers=8"]
SSL_CPU = [
    "--model.init_args.pretrained=false",
    "--data.init_args.batch_size=4",
    "--data.init_args.num_workers=0",
]

ENTRIES: dict[str, Entry] = {
    "swad_pacs": Entry(
        "configs/swad/pacs.yaml",
        swad_pacs_data,
        gpu_args=["--model.init_args.pretrained=false", "--data.init_args.num_workers=8"],
        cpu_args=[
            "--model.init_args.pretrained=false",
            "--model.init_args.backbone=resnet18",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
        ],
    ),
    "simclr_cifar10": Entry("configs/scorecl/simclr_cifar10.yaml", cifar10_data, SSL_GPU, SSL_CPU),
    "scorecl_simclr_cifar10": Entry(
        "configs/scorecl/simclr_cifar10_scorecl.yaml",
        cifar10_data,
        SSL_GPU,
        SSL_CPU,
        tweak=short_score_pretraining,
    ),
    "prs_cifar100": Entry(
        "configs/prs/cifar100.yaml",
        cifar100_data,
        gpu_args=["--data.init_args.num_workers=8"],
        cpu_args=[
            "--model.init_args.backbone=prs_vit_digits",
            "--data.init_args.batch_size=4",
            "--data.init_args.num_workers=0",
        ],
    ),
    "qg_t5_squad": Entry(
        "configs/qg/t5_squad.yaml",
        qg_squad_data,
        gpu_args=[*QG_COMMON, f"--model.init_args.model_config={T5_LARGE}"],
        cpu_args=[*QG_COMMON, f"--model.init_args.model_config={T5_TINY}", "--data.init_args.batch_size=2"],
    ),
    "ppap_resnet50_imagenet": Entry(
        "configs/ppap/resnet50_imagenet.yaml",
        ppap_imagenet_data,
        gpu_args=["--model.init_args.pretrained=false"],
        cpu_args=[
            "--model.init_args.pretrained=false",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=2",
            "--data.init_args.num_workers=0",
        ],
    ),
    "ant_adm_ffhq_uw": Entry(
        "configs/ant/adm_ffhq_uw.yaml",
        ffhq_data,
        gpu_args=["--data.init_args.num_workers=8"],
        cpu_args=[
            "--model.init_args.unet_preset=tiny",
            "--data.init_args.image_size=16",
            "--data.init_args.num_workers=0",
        ],
    ),
}


class Meter(L.Callback):
    """Steps/s over the steps after the first `warmup`, and peak accelerator memory."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.n = warmup, None, None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()
        elif trainer.global_step > self.warmup:
            self.n = trainer.global_step - self.warmup

    def on_train_end(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.t1 = time.perf_counter()


def run(name: str, entry: Entry, steps: int, cpu: bool, tmp: Path) -> dict:
    data_args = entry.make_data(tmp / name, cpu)
    common = [
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp / name}",
        f"--trainer.logger.init_args.save_dir={tmp / name / 'logs'}",
        "--trainer.enable_progress_bar=false",
    ]
    device = (
        ["--trainer.accelerator=cpu", "--trainer.precision=32-true"]
        if cpu
        else ["--trainer.accelerator=gpu", "--trainer.devices=1", "--trainer.precision=bf16-mixed"]
    )
    cli = LitCLI(
        args=[
            "-c",
            str(ROOT / entry.config),
            *data_args,
            *common,
            *device,
            *(entry.cpu_args if cpu else entry.gpu_args),
        ],
        run=False,
    )
    if entry.tweak is not None:
        entry.tweak(cli, tmp / name, cpu)
    meter = Meter(warmup=min(10, steps // 3))
    cli.trainer.callbacks.append(meter)
    if torch.cuda.is_available() and not cpu:
        torch.cuda.reset_peak_memory_stats()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    steps_per_s = meter.n / (meter.t1 - meter.t0) if meter.n else float("nan")
    peak = (
        torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() and not cpu else float("nan")
    )
    return {
        "method": name,
        "config": entry.config,
        "steps": steps,
        "steps_per_s": steps_per_s,
        "peak_gib": peak,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu", action="store_true", help="tiny CPU run (no GPU needed)")
    parser.add_argument("--steps", type=int, default=None, help="steps per method (default 200 GPU, 6 CPU)")
    parser.add_argument("--only", nargs="*", help=f"entries to run (default all: {', '.join(ENTRIES)})")
    parser.add_argument("--out", type=Path, default=Path("outputs/smoke.json"))
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no GPU visible: use --cpu for the CPU smoke run")
    steps = args.steps or (6 if args.cpu else 200)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or list(ENTRIES):
            rows.append(run(name, ENTRIES[name], steps, args.cpu, Path(tmp)))
    device = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    print(f"\nsmoke run on {device}, {steps} steps per method")
    print(f"{'method':20s} {'steps/s':>10s} {'peak GiB':>10s}")
    for r in rows:
        print(f"{r['method']:20s} {r['steps_per_s']:10.2f} {r['peak_gib']:10.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
