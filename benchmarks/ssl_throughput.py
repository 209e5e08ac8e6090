"""SimCLR training throughput on CPU and the per-step overhead of ScoreCL with a pretrained, frozen score network.

    python benchmarks/ssl_throughput.py                         # digits (small CNN, batch 256) and CIFAR-size
    python benchmarks/ssl_throughput.py --setups digits --steps 30

For each setup the same SimCLR module takes training steps (two views, NT-Xent, online probe, backward, optimizer
step) on pre-augmented batches, alternately without and with ScoreCL (score values of both views from the frozen
score network, pair weights, weighted reduction), so both see the same machine load; the median step times give
images/s (2 views per image) and the overhead ratio. `fit` also measures end-to-end `cli.py fit` images/s of
`configs/scorecl/simclr_digits.yaml` (augmentation included). Setups:
- digits: small_cnn on 8x8 digits, batch 256; score net = the 4-layer CNN (width 32, as the digits
  configs) after 200 DSM steps;
- cifar: ResNet-18 with CIFAR stem on random 32x32 images, batch `--cifar_batch`; score net = diffusers UNet2DModel
  (channels 32, 64) after 20 DSM steps (its cost, not its quality, matters here).
Target (issue #3): ScoreCL / SimCLR step time <= 1.3. Exits non-zero when missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.scorecl import ScoreWeighting, WeightedMean  # noqa: E402
from datamodules.ssl.datamodule import DigitsDataModule  # noqa: E402
from lightning_modules.ssl.base import mean_reducer  # noqa: E402
from lightning_modules.ssl.optim import build_optimizer  # noqa: E402
from lightning_modules.ssl.simclr import SimCLR  # noqa: E402

TARGET = 1.3


def digits_batches(batch_size: int, n: int) -> list[dict]:
    dm = DigitsDataModule(batch_size=batch_size)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    return [dm.on_after_batch_transfer(next(it), 0) for _ in range(n)]


def random_batches(batch_size: int, n: int, shape=(3, 32, 32)) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        raw = [torch.rand(batch_size, *shape, generator=g) for _ in range(2)]
        out.append(
            {
                "views": [(r - 0.5) / 0.25 for r in raw],
                "raw_views": raw,
                "labels": torch.randint(0, 10, (batch_size,), generator=g),
            }
        )
    return out


def time_steps(module: SimCLR, callback: ScoreWeighting, batches: list[dict], steps: int) -> dict[str, float]:
    """Alternate plain and ScoreCL steps; return median seconds per step of each."""
    module.log = lambda *a, **k: None  # no trainer: logging is not part of the measurement
    opt = build_optimizer("lars", [{"params": list(module.parameters())}], lr=0.1, weight_decay=1e-4)
    times: dict[str, list[float]] = {"simclr": [], "scorecl": []}
    for i in range(steps + 2):
        batch = batches[i % len(batches)]
        for mode in ("simclr", "scorecl"):
            t0 = time.perf_counter()
            if mode == "scorecl":
                module.pair_reducer = WeightedMean(callback.weights_for(module, batch))
            loss = module.training_step(batch, i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            module.pair_reducer = mean_reducer
            if i >= 2:  # first steps warm up allocators
                times[mode].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def fit_images_per_second(steps: int) -> float:
    from cli import LitCLI

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 2:
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.dt = (time.perf_counter() - self.t0) / (trainer.global_step - 2)

    timer = Timer()
    root = tempfile.mkdtemp()  # the CLI saves config.yaml in the run folder
    cli = LitCLI(
        args=[
            "-c",
            "configs/scorecl/simclr_digits.yaml",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={root}",
            "--trainer.enable_progress_bar=false",
            f"--trainer.max_steps={steps + 2}",
            "--trainer.limit_val_batches=0",
        ],
        run=False,
    )
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.datamodule.batch_size / timer.dt


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--setups", nargs="+", default=["digits", "cifar", "fit"], choices=["digits", "cifar", "fit"]
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cifar_batch", type=int, default=64)
    parser.add_argument("--digits_score_width", type=int, default=32, help="width of the digits score CNN")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    failed = False
    for setup in args.setups:
        if setup == "fit":
            ips = fit_images_per_second(args.steps)
            print(f"[fit] cli.py fit simclr_digits (augmentation included): {ips:.0f} images/s")
            continue
        if setup == "digits":
            module = SimCLR(
                backbone="small_cnn", input_shape=(1, 8, 8), proj_hidden_dim=256, proj_output_dim=64
            )
            batches, bs = digits_batches(256, 4), 256
            callback = ScoreWeighting(
                score_net="cnn", net_kwargs={"width": args.digits_score_width, "layers": 4}, sigma_min=0.02
            )
            callback.build(1, 8)
            callback.pretrain([(b["raw_views"][0], None) for b in batches], 200, "cpu")
        else:
            module = SimCLR(backbone="resnet18", cifar_stem=True, input_shape=(3, 32, 32))
            batches, bs = random_batches(args.cifar_batch, 2), args.cifar_batch
            callback = ScoreWeighting(score_net="unet", net_kwargs={"channels": (32, 64)})
            callback.build(3, 32)
            callback.pretrain([(b["raw_views"][0], None) for b in batches], 20, "cpu")
        t = time_steps(module, callback, batches, args.steps)
        ratio = t["scorecl"] / t["simclr"]
        failed |= ratio > TARGET
        print(
            f"[{setup}] batch {bs}: SimCLR {t['simclr'] * 1e3:.0f} ms/step = {bs / t['simclr']:.0f} images/s; "
            f"ScoreCL {t['scorecl'] * 1e3:.0f} ms/step; overhead ratio {ratio:.3f} (target <= {TARGET})"
        )
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
