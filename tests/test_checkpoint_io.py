"""Checkpoints are written atomically, and an unreadable one is a clear error through the CLI."""

from pathlib import Path

import pytest
import torch

from cli import LitCLI
from plugins import CorruptCheckpointError, SafeCheckpointIO

QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")


def test_save_is_atomic(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, target)
    assert torch.load(target)["step"] == 1

    def dies_mid_write(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    good = tmp_path / "good.ckpt"
    SafeCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, good)
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CorruptCheckpointError, match="broken.ckpt cannot be read"):
        SafeCheckpointIO().load_checkpoint(broken)
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt"):
        LitCLI(
            args=[
                "fit",
                "-c",
                QUICKSTART,
                f"--ckpt_path={broken}",
                "--trainer.max_steps=1",
                f"--trainer.logger.init_args.save_dir={tmp_path}",
            ]
        )


def test_cli_installs_the_safe_checkpoint_io(tmp_path):
    cli = LitCLI(args=["-c", QUICKSTART, f"--trainer.logger.init_args.save_dir={tmp_path}"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)
