"""Training throughput: `cli.py fit` against a plain PyTorch loop, and ERM+SWAD against ERM.

    python benchmarks/throughput.py                       # quickstart setup (RotatedDigits, small CNN), CPU
    python benchmarks/throughput.py --steps 600 --repeats 3

Same model, data pipeline and optimizer in every case; the config is the quickstart's, instantiated by the real
CLI. Time per step is measured over the steps after `--warmup`, median over `--repeats` rounds; each round runs
the four cases back to back (so slow drift of a shared machine hits them alike):
- plain: a hand-written loop over the datamodule's train loader (forward, cross-entropy, backward, Adam step);
- fit: the CLI's Trainer.fit with validation and checkpointing off (the framework's own overhead);
- erm / erm+swad: Trainer.fit with validation every F steps as in the real runs, without and with the SWAD
  callback (the callback's per-step averaging and per-validation segment handling).
Targets (issue #2): fit/plain <= 1.10, (erm+swad)/erm <= 1.15. The script prints the ratios and exits non-zero
when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks import SWAD  # noqa: E402
from cli import LitCLI  # noqa: E402


class StepTimer(L.Callback):
    """Wall time from the first step after `warmup` to the end of training, divided by the steps timed."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1, self.steps = warmup, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.t0 is None:
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.t1 = time.perf_counter()
        self.steps = trainer.global_step - self.warmup

    @property
    def per_step(self) -> float:
        return (self.t1 - self.t0) / self.steps


def build(config: str, extra: list[str]):
    cli = LitCLI(args=["-c", config, *extra], run=False)
    return cli.model, cli.datamodule


def plain_loop(config: str, steps: int, warmup: int) -> float:
    L.seed_everything(0)
    model, dm = build(config, [])
    dm.setup("fit")
    opt = model.configure_optimizers()
    model.train()
    it = iter(dm.train_dataloader())
    t0 = None
    for step in range(steps):
        if step == warmup:
            t0 = time.perf_counter()
        try:
            x, y, _ = next(it)
        except StopIteration:
            it = iter(dm.train_dataloader())
            x, y, _ = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / (steps - warmup)


def lightning_fit(config: str, steps: int, warmup: int, swad: bool | None) -> float:
    """swad=None: no validation (pure loop overhead); False: ERM with validation; True: ERM + SWAD."""
    L.seed_everything(0)
    model, dm = build(config, [])
    timer = StepTimer(warmup)
    callbacks = [timer] + ([SWAD(early_stop=False)] if swad else [])
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
        num_sanity_val_steps=0,
        limit_val_batches=0 if swad is None else 1.0,
    )
    trainer.fit(model, datamodule=dm)
    return timer.per_step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-c", "--config", default="configs/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    # the four cases run back to back within each repeat, so slow drift of a shared machine hits them alike
    times: dict[str, list[float]] = {"plain": [], "fit": [], "erm": [], "swad": []}
    for _ in range(args.repeats):
        times["plain"].append(plain_loop(args.config, args.steps, args.warmup))
        times["fit"].append(lightning_fit(args.config, args.steps, args.warmup, None))
        times["erm"].append(lightning_fit(args.config, args.steps, args.warmup, False))
        times["swad"].append(lightning_fit(args.config, args.steps, args.warmup, True))
    plain, fit, erm, swad = (statistics.median(times[k]) for k in ("plain", "fit", "erm", "swad"))
    rows = [
        ("plain PyTorch loop", plain),
        ("cli.py fit (no validation)", fit),
        ("ERM (validation every F steps)", erm),
        ("ERM + SWAD", swad),
    ]
    print(
        f"\nconfig {args.config}, {args.steps} steps ({args.warmup} warm-up), median of {args.repeats}, "
        f"{torch.get_num_threads()} threads"
    )
    for name, value in rows:
        print(f"  {name:34s} {1000 * value:8.2f} ms/step")
    r1, r2 = fit / plain, swad / erm
    print(f"  fit / plain      = {r1:.3f}  (target <= 1.10) {'OK' if r1 <= 1.10 else 'MISSED'}")
    print(f"  ERM+SWAD / ERM   = {r2:.3f}  (target <= 1.15) {'OK' if r2 <= 1.15 else 'MISSED'}")
    sys.exit(0 if r1 <= 1.10 and r2 <= 1.15 else 1)


if __name__ == "__main__":
    main()
