"""Weights & Biases logger that runs offline unless the user has logged in.

Machines without internet (and users without an account) still get a local W&B run directory that
`wandb sync` can upload later; nothing tries to reach the network. `WANDB_MODE` in the environment, or an explicit
`offline:` in the config, always wins.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


def wandb_has_credentials() -> bool:
    """True when an API key is configured: `WANDB_API_KEY`, or an `api.wandb.ai` entry in ~/.netrc (`wandb login`)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not path.is_file():
        return False
    try:
        hosts = netrc.netrc(str(path)).hosts
    except (netrc.NetrcParseError, OSError):
        return False
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    return base in hosts


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger; `offline=None` (the default) means "offline unless logged in"."""

    def __init__(self, *args, offline: bool | None = None, **kwargs) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE", "").lower()
            offline = mode in ("offline", "dryrun") or (mode != "online" and not wandb_has_credentials())
        super().__init__(*args, offline=offline, **kwargs)
