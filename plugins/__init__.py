"""Trainer plugins with the framework's defaults (LitCLI installs them unless a config sets its own)."""

from plugins.checkpoint_io import (
    UNREADABLE,
    CorruptCheckpointError,
    SafeCheckpointIO,
    corrupt_checkpoint_error,
)

__all__ = ["UNREADABLE", "CorruptCheckpointError", "SafeCheckpointIO", "corrupt_checkpoint_error"]
