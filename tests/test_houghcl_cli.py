"""HoughCL through the real CLI: the digits demo (Hough and arg-max) for a few steps, and the ImageNet config on a
tiny ImageFolder fixture (with the crop geometry it records)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli import LitCLI
from datamodules.errors import DataLayoutError
from datamodules.houghcl import DigitsGeometryDataModule, GeometricViews, ImageFolderGeometryDataModule
from lightning_modules.houghcl.geometry import pair_correctness

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "houghcl"


def fast(tmp_path: Path) -> list[str]:
    return [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--data.init_args.batch_size=32",
        "--model.init_args.queue_size=256",
    ]


@pytest.mark.parametrize("config", ["digits.yaml", "digits_argmax.yaml"])
def test_digits_demo_runs_and_logs_pair_quality(tmp_path, config):
    cli = LitCLI(args=["fit", "-c", str(CONFIGS / config), *fast(tmp_path)])
    results = cli.test_results["last"]
    assert results["test/knn20/acc1"] > 0.5  # far above chance (10 %)
    metrics = sorted((tmp_path / "logs").rglob("metrics.csv"))[-1].read_text()
    assert "train/pairs/argmax_step" in metrics and "train/pairs/hough_step" in metrics
    assert int(cli.model.queue_ptr) == 3 * 32  # three batches enqueued
    assert (Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt").is_file()


def test_recorded_boxes_and_flips_match_the_view_content():
    """On a horizontal ramp image (pixel value = x / width) each view's edge columns equal its recorded box."""
    torch.manual_seed(0)
    ramp = ((torch.arange(64).float() + 0.5) / 64).expand(1, 64, 64).clone()
    views = GeometricViews([(ramp, 0)], size=32, scale=(0.2, 0.6), flip_prob=0.5)
    seen_flips = set()
    for _ in range(20):
        item = views[0]
        for view, box, flip in zip(item["views"], item["boxes"], item["flips"], strict=True):
            left, right = view[0, :, 0].mean().item(), view[0, :, -1].mean().item()
            if flip:
                left, right = right, left
            x0, x1 = box[0].item(), box[2].item()
            step = (x1 - x0) / 32
            assert left == pytest.approx(x0 + step / 2, abs=0.02) and right == pytest.approx(
                x1 - step / 2, abs=0.02
            )
            seen_flips.add(bool(flip))
    assert seen_flips == {True, False}
    dm = DigitsGeometryDataModule(batch_size=8)
    dm.setup("fit")
    assert dm.train_set[0]["views"][0].shape == (1, 32, 32)
    # identity geometry: both views the whole image, unflipped -> identity pairing is 100 % correct
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    flip = torch.zeros(1, dtype=torch.bool)
    correct, total = pair_correctness(torch.arange(64)[None], full, flip, full, flip, (8, 8), tolerance=0)
    assert correct == total == 64


def write_folder(root: Path, size: int = 64) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("n01", "n02"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{cls}_{i}.JPEG")


def test_imagefolder_datamodule_and_paper_config_on_fixture(tmp_path):
    write_folder(tmp_path / "data")
    dm = ImageFolderGeometryDataModule(root=str(tmp_path / "data"), image_size=32, resize=36, batch_size=2)
    assert dm.num_classes == 2
    dm.setup("fit")
    item = dm.train_set[0]
    assert item["views"][0].shape == (3, 32, 32) and item["boxes"].shape == (2, 4)
    with pytest.raises(DataLayoutError, match="ImageFolder tree"):
        ImageFolderGeometryDataModule(root=str(tmp_path / "missing"))
    cli = LitCLI(
        args=[
            "fit",
            "-c",
            str(CONFIGS / "imagenet.yaml"),
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.strategy=auto",
            "--trainer.sync_batchnorm=false",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
            "--model.init_args.backbone=resnet18",
            "--model.init_args.proj_hidden_dim=64",
            "--model.init_args.proj_output_dim=16",
            "--model.init_args.queue_size=8",
            f"--data.init_args.root={tmp_path / 'data'}",
            "--data.init_args.image_size=64",
            "--data.init_args.resize=72",
            "--data.init_args.batch_size=2",
            "--data.init_args.eval_batch_size=4",
            "--data.init_args.num_workers=0",
        ]
    )
    assert cli.trainer.global_step == 2
    assert int(cli.model.queue_ptr) == 4
