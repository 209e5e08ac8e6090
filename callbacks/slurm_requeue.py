"""SLURM auto-requeue that is safe under DDP: act on the requeue signal at a step boundary, on every rank together.

Lightning's own SLURM handler (``SLURMEnvironment(auto_requeue=True)``) saves the HPC checkpoint *inside the signal
handler*. ``Trainer.save_checkpoint`` is a collective (a barrier, and rank 0 writes), and a Python signal handler runs
wherever the main thread happens to be: if one rank is blocked in a gradient all-reduce when the signal lands while
another enters the handler's barrier, the ranks wait on different collectives and the job hangs until the time limit
kills it, without requeueing. We saw exactly that on a loaded machine (`tests/test_slurm.py`).

This callback splits the work the safe way:

1. the signal handler only records that the signal came (no collective, no I/O);
2. at the end of every ``check_every_n_steps``-th training batch all ranks agree on "any rank was signalled"
   (one boolean all-reduce, the same number of calls on every rank, so it cannot mismatch);
3. then every rank calls ``trainer.save_checkpoint(<default_root_dir>/hpc_ckpt_<n>.ckpt)`` (the file name Lightning
   restores from when the requeued job starts), and rank 0 runs ``scontrol requeue <job id>``.

Training then continues until SLURM ends the job (``scontrol requeue`` stops it with SIGTERM and queues it again;
SIGTERM is reset to its default action once the checkpoint is written, so the tasks exit at once instead of waiting
for SLURM's SIGKILL); a requeue that fails is logged and training carries on, checkpoint written. The checkpoint is taken where ModelCheckpoint takes its
own step checkpoints, so a resumed run continues from a consistent step (tested bit for bit in `tests/test_slurm.py`);
never at an epoch's last batch, where Lightning's resume is not exact (the check waits one step).

LitCLI installs this callback, with ``SLURMEnvironment(auto_requeue=False)`` so Lightning's handler stays off,
whenever it runs inside a SLURM job step and the config sets no cluster environment of its own.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from types import FrameType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

# A child of Lightning's logger, so its messages reach the console (and the job's output) like Lightning's own.
log = logging.getLogger("lightning.pytorch.litlab.slurm_requeue")


def slurm_job_id() -> str:
    """The id ``scontrol requeue`` needs: ``<array job>_<task>`` for an array task, else ``SLURM_JOB_ID``."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (
        f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        if array_job
        else os.environ.get("SLURM_JOB_ID", "")
    )
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job):
        raise RuntimeError(f"cannot requeue: no valid SLURM job id in the environment (got {job!r})")
    return job


class SlurmRequeue(Callback):
    """On ``signum`` (SIGUSR1, what ``#SBATCH --signal=SIGUSR1@90`` sends), checkpoint and requeue the job.

    Args:
        signum: the signal to handle.
        check_every_n_steps: how often the ranks agree on the flag (one tiny all-reduce each time; 1 = every step).
            The signal comes 90 s before the limit in our sbatch template, so a check every step is the safe default.
        requeue_command: the command rank 0 runs, ``{job}`` replaced by the job id (tests pass a harmless one).
    """

    def __init__(
        self,
        signum: int = signal.SIGUSR1,
        check_every_n_steps: int = 1,
        requeue_command: tuple[str, ...] = ("scontrol", "requeue", "{job}"),
    ) -> None:
        if check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.signum = int(signum)
        self.check_every_n_steps = check_every_n_steps
        self.requeue_command = tuple(requeue_command)
        self.signalled = False
        self.handled = False
        self.checkpoint_path: str | None = None
        self._previous_handler: Any = None

    # ------------------------------------------------------------------ the signal handler: record only
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signalled = True

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(self.signum, self._on_signal)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    # ------------------------------------------------------------------ the collective part, at a step boundary
    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self.handled or trainer.global_step % self.check_every_n_steps:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and trainer.num_training_batches > 1:
            # Lightning resumes a checkpoint taken at the end of an epoch's last batch at the wrong place (the
            # epoch's end-of-epoch work is redone or skipped, and the weights diverge); wait one step. The flag is
            # the same on every rank, so the all-reduce below still pairs up.
            return
        # Every rank reaches this call at the same step, so the all-reduce always pairs up.
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        self.handled = True
        rank_zero = trainer.is_global_zero
        if rank_zero:
            log.info(f"Requeue signal received: writing the HPC checkpoint at step {trainer.global_step}")
        for logger in trainer.loggers:
            logger.finalize("finished")  # flush metrics before the job is stopped
        self.checkpoint_path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(self.checkpoint_path)  # collective: every rank calls it
        if threading.current_thread() is threading.main_thread():
            # The requeue ends this job with SIGTERM. Lightning's SIGTERM handler runs a broadcast inside the
            # handler (the same hazard as above) and then waits for SLURM's SIGKILL; with the checkpoint on disk
            # the right reaction is to exit at once.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if rank_zero:
            self._requeue()

    def _requeue(self) -> None:
        job = slurm_job_id() if any("{job}" in part for part in self.requeue_command) else ""
        cmd = [part.replace("{job}", job) for part in self.requeue_command]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode == 0:
            log.info(f"Requeued SLURM job: {job} ({' '.join(cmd)})")
        else:
            log.warning(f"Requeuing SLURM job {job} failed ({result.returncode}): {result.stderr.strip()}")
