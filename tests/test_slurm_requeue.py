"""SlurmRequeue (DDP-safe auto-requeue) without a cluster: 2 gloo processes, the signal reaching one rank only."""

import signal
from pathlib import Path

import pytest
import torch

from callbacks.slurm_requeue import SlurmRequeue, slurm_job_id
from tests.ddp_runner import run_worker

WORKER = Path(__file__).with_name("ddp_requeue_worker.py")


def test_both_ranks_checkpoint_at_the_same_step_when_one_rank_is_signalled(tmp_path):
    out = run_worker(WORKER, tmp_path / "out.pt", 1)
    ranks = out["ranks"]
    assert [r["signalled"] for r in ranks] == [False, True]  # only rank 1 got the signal...
    assert all(r["handled"] for r in ranks)  # ...and both acted on it
    assert ranks[0]["path"] == ranks[1]["path"] == str(tmp_path / "hpc_ckpt_1.ckpt")
    assert out["global_step"] == 10  # training went on to the end: no rank hung
    ckpt = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2  # written at the end of the step during which the signal came
    assert (tmp_path / "requeued.txt").read_text() == "requeued\n"  # rank 0 requeued, once
    assert sorted(p.name for p in tmp_path.glob("hpc_ckpt_*.ckpt")) == ["hpc_ckpt_1.ckpt"]
    # once the checkpoint is on disk, SIGTERM (what the requeue sends) ends each rank at once
    assert all(r["sigterm_default"] and all(r["sigterm_default"]) for r in ranks)


def test_a_signal_during_an_epochs_last_batch_checkpoints_one_step_later(tmp_path):
    # 4 batches per rank and epoch: the signal comes during the last batch of epoch 0 (step 3); resuming from a
    # checkpoint taken there is not exact in Lightning, so both ranks wait for the first batch of epoch 1
    out = run_worker(WORKER, tmp_path / "out.pt", 3)
    assert all(r["handled"] for r in out["ranks"]) and out["global_step"] == 10
    ckpt = torch.load(tmp_path / "hpc_ckpt_1.ckpt", weights_only=False)
    assert ckpt["global_step"] == 5 and ckpt["epoch"] == 1


def test_job_id_comes_from_the_slurm_environment(monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "1234")
    assert slurm_job_id() == "1234"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_job_id() == "77_3"
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID")
    monkeypatch.setenv("SLURM_JOB_ID", "1; rm -rf /")
    with pytest.raises(RuntimeError, match="no valid SLURM job id"):
        slurm_job_id()


def test_the_cli_swaps_lightnings_handler_for_the_callback_only_inside_slurm(monkeypatch, tmp_path):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from cli import LitCLI

    def build():
        cli = LitCLI(
            args=["-c", "configs/quickstart.yaml", f"--trainer.default_root_dir={tmp_path}"], run=False
        )
        return cli.trainer

    for key in ("SLURM_NTASKS", "SLURM_JOB_NAME", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    trainer = build()
    assert not any(isinstance(c, SlurmRequeue) for c in trainer.callbacks)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "litlab")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_NODELIST", "vm")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    monkeypatch.setenv("SLURM_NODEID", "0")
    trainer = build()
    assert sum(isinstance(c, SlurmRequeue) for c in trainer.callbacks) == 1
    env = trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue  # Lightning's in-handler save is off
    assert SlurmRequeue().signum == signal.SIGUSR1
