"""Sample-grid logging: after each validation, generate a fixed set of samples and save them as a PNG grid.

Contract with the module: ``generate(indices: list[int]) -> Tensor`` of images in [-1, 1], shape (N, C, H, W),
deterministic for given indices (same noise every time, so grids are comparable across steps). With the `EMA`
callback the grid shows the EMA model (validation runs with EMA weights).

Files: ``<log_dir>/sample_grids/step_<global_step>.png`` (``default_root_dir`` when there is no logger), written
on rank 0 only (nothing else is changed there). When a logger offers ``log_image`` (W&B), the grid is also logged
as the image ``samples``.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from torchvision.utils import make_grid, save_image


class SampleGrid(Callback):
    """Save (and log) a grid of ``num_samples`` generated images after every validation during fit."""

    def __init__(self, num_samples: int = 64, dirname: str = "sample_grids") -> None:
        super().__init__()
        self.num_samples, self.dirname = num_samples, dirname
        self.last_path: Path | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # trainer.log_dir broadcasts from rank 0: every rank must ask for it, or rank 0 waits forever under DDP
        out = Path(trainer.log_dir or trainer.default_root_dir) / self.dirname
        if not trainer.is_global_zero:
            return
        images = pl_module.generate(list(range(self.num_samples)))
        grid = make_grid((images.float().cpu() + 1) / 2, nrow=int(math.ceil(math.sqrt(self.num_samples))))
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"step_{trainer.global_step:07d}.png"
        tmp = path.with_suffix(".png.tmp")
        save_image(grid, tmp, format="png")
        tmp.replace(path)
        self.last_path = path
        for logger in trainer.loggers:
            if callable(getattr(logger, "log_image", None)):
                logger.log_image(key="samples", images=[grid], step=trainer.global_step)
