"""SlurmRequeue under Lightning DDP (2 CPU processes, gloo): only rank 1 receives the requeue signal.

Usage: python tests/ddp_requeue_worker.py OUT.pt SIGNAL_STEP
Rank 1 sends itself SIGUSR1 at the start of training step SIGNAL_STEP; the requeue "command" appends a line to
<OUT's folder>/requeued.txt. Saves what each rank saw so the test can check the ranks acted together.
"""

import os
import signal
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbacks.slurm_requeue import SlurmRequeue  # noqa: E402
from tests.toy import ScriptedLossModule, toy_loaders  # noqa: E402


class SignalRankOne(Callback):
    def __init__(self, step: int) -> None:
        self.step = step
        self.sigterm_default_after: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)
        if trainer.global_step > self.step + 1:  # after the checkpoint step
            self.sigterm_default_after.append(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)


def main() -> None:
    out, signal_step = Path(sys.argv[1]), int(sys.argv[2])
    marker = out.parent / "requeued.txt"
    requeue = SlurmRequeue(
        requeue_command=(sys.executable, "-c", f"open({str(marker)!r}, 'a').write('requeued\\n')")
    )
    sender = SignalRankOne(signal_step)
    L.seed_everything(0)
    train, _ = toy_loaders(steps_per_epoch=8, batch_size=8)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=10,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out.parent),
        callbacks=[sender, requeue],
    )
    trainer.fit(ScriptedLossModule([1.0]), train_dataloaders=train)
    results = {
        "signalled": requeue.signalled,
        "handled": requeue.handled,
        "path": requeue.checkpoint_path,
        "sigterm_default": sender.sigterm_default_after,
    }
    gathered = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, results)
    if trainer.is_global_zero:
        torch.save({"ranks": gathered, "global_step": trainer.global_step}, out)


if __name__ == "__main__":
    main()
