"""MatchVisualization: write each predicted dense flow and a PNG drawing the matches (`predict`).

Contract (no isinstance checks): the module's `predict_step` returns a dict with `flow`, a `(B, 2, H, W)` tensor of
target -> source displacements in pixels of the `(B, 3, H, W)` images, and the batch is a dict with `src_img`,
`trg_img` in [0, 1] and optionally `name` (a list of strings). For pair b it writes `<out_dir>/<name>_flow.npy`
(`(2, H, W)` float32, x then y) and `<out_dir>/<name>_matches.png`: target (left) and source (right) side by side with
a line from each point of a `grid` x `grid` lattice on the target to where the flow sends it in the source. With
`log_wandb` and a W&B logger, the PNGs are also logged as images. Each rank writes its own pairs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image, ImageDraw


def draw_matches(
    source: torch.Tensor, target: torch.Tensor, flow: torch.Tensor, grid: int = 8
) -> Image.Image:
    """Side-by-side target | source image with lines for the flow at a `grid` x `grid` lattice of target points."""

    def to_pil(image: torch.Tensor) -> Image.Image:
        return Image.fromarray((image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8))

    h, w = target.shape[-2:]
    canvas = Image.new("RGB", (2 * w, h))
    canvas.paste(to_pil(target), (0, 0))
    canvas.paste(to_pil(source), (w, 0))
    draw = ImageDraw.Draw(canvas)
    steps = (torch.arange(grid) + 0.5) / grid
    for i, y in enumerate((steps * h).long().tolist()):
        for j, x in enumerate((steps * w).long().tolist()):
            dx, dy = flow[:, y, x].tolist()
            colour = (int(255 * j / max(grid - 1, 1)), int(255 * i / max(grid - 1, 1)), 200)
            draw.line([(x, y), (w + x + dx, y + dy)], fill=colour, width=1)
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=colour)
    return canvas


class MatchVisualization(BasePredictionWriter):
    """Save flows (.npy) and match drawings (.png) for every predicted pair (see the module docstring)."""

    def __init__(self, out_dir: str = "predictions/matches", grid: int = 8, log_wandb: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.grid = grid
        self.log_wandb = log_wandb

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        if not isinstance(prediction, dict) or "flow" not in prediction:
            raise ValueError(
                "MatchVisualization needs predict_step to return a dict with 'flow' (B, 2, H, W)"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        flow = prediction["flow"].detach().float().cpu()
        names = batch.get("name") or [
            f"r{trainer.global_rank}_b{batch_idx}_{i}" for i in range(flow.shape[0])
        ]
        images = []
        for b, name in enumerate(names):
            np.save(self.out_dir / f"{name}_flow.npy", flow[b].numpy())
            png = draw_matches(
                batch["src_img"][b].float().cpu(), batch["trg_img"][b].float().cpu(), flow[b], self.grid
            )
            png.save(self.out_dir / f"{name}_matches.png")
            images.append(png)
        logger = trainer.logger
        if self.log_wandb and logger is not None and hasattr(logger, "log_image"):
            logger.log_image(key="predict/matches", images=images, caption=list(names))
