"""Checkpoint writing that never leaves a half-written file, and reading that says what is wrong.

Saving: the checkpoint is written to a temporary file beside the target, flushed to disk, then renamed over the
target (`os.replace` is atomic on a local filesystem), so a job killed while saving leaves the previous checkpoint
intact. Remote paths (fsspec URLs) go through Lightning's own writer.

Loading: a truncated or corrupt file raises `CorruptCheckpointError` naming the file and what to do, instead of
the bare `OSError: [Errno 22] Invalid argument` torch gives.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read."""


UNREADABLE = (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile)


def corrupt_checkpoint_error(path, exc: BaseException) -> CorruptCheckpointError:
    """The error for a checkpoint file that exists but cannot be read."""
    return CorruptCheckpointError(
        f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}). It is truncated or corrupt (for "
        "example copied partially, or written by a process killed mid-save by a tool that does not save "
        f"atomically). Resume from another checkpoint in {Path(path).parent} or start without --ckpt_path."
    )


class SafeCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with atomic local saves and clear errors for unreadable checkpoints."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    def load_checkpoint(
        self, path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict:
        kwargs = {} if map_location is None else {"map_location": map_location}
        try:
            return super().load_checkpoint(path, weights_only=weights_only, **kwargs)
        except FileNotFoundError:
            raise
        except UNREADABLE as exc:
            raise corrupt_checkpoint_error(path, exc) from exc
