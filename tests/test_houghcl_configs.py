"""HoughCL's other configs on tiny fixtures in the datasets' release layouts: Tiny ImageNet and COCO images
(instantiated through the CLI, one batch through the model, no training), VOC segmentation (instantiated, one
forward), and the sample-photo demo (two training steps)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli import LitCLI
from datamodules.errors import DataLayoutError
from datamodules.houghcl import ImageFolderGeometryDataModule, SamplePhotosGeometryDataModule
from tests.test_voc import write_voc

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "houghcl"
SMALL_RESNET = [
    "--model.init_args.backbone=resnet18",
    "--model.init_args.proj_hidden_dim=32",
    "--model.init_args.proj_output_dim=8",
    "--model.init_args.queue_size=8",
]


def jpeg(path: Path, size: int = 64, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_tiny_imagenet(root: Path) -> None:
    """tiny-imagenet-200 as released: train/<wnid>/images/*.JPEG (+ boxes file), val/images + annotations."""
    wnids = ["n01443537", "n01629819"]
    (root).mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    lines = []
    for k, wnid in enumerate(wnids):
        for i in range(3):
            jpeg(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", seed=10 * k + i)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
        jpeg(root / "val" / "images" / f"val_{k}.JPEG", seed=100 + k)
        lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def instantiate(config: str, tmp_path: Path, *extra: str) -> LitCLI:
    args = [
        "-c",
        str(CONFIGS / config),
        "--trainer.accelerator=cpu",
        "--trainer.devices=1",
        "--trainer.strategy=auto",
        "--trainer.sync_batchnorm=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        "--data.init_args.num_workers=0",
        *extra,
    ]
    return LitCLI(args=args, run=False)


def one_training_batch(cli: LitCLI) -> dict:
    dm = cli.datamodule
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return dm.on_after_batch_transfer(batch, 0)


def test_tiny_imagenet_config_reads_the_release_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    write_tiny_imagenet(root)
    cli = instantiate(
        "tiny_imagenet.yaml",
        tmp_path,
        f"--data.init_args.root={root}",
        "--data.init_args.batch_size=2",
        *SMALL_RESNET,
    )
    dm, model = cli.datamodule, cli.model
    assert dm.num_classes == 2 and model.hparams.num_classes == 2 and dm.input_shape == (3, 64, 64)
    dm.setup("fit")
    assert len(dm.train_set) == 6 and sorted(y for _, y in dm.test_set) == [0, 1]
    assert dm.test_set.labels == [0, 1]  # val_annotations' wnids map to the train class indices
    batch = one_training_batch(cli)
    assert batch["boxes"].shape == (2, 2, 4) and batch["views"][0].shape == (2, 3, 64, 64)
    with torch.no_grad():
        from lightning_modules.houghcl.module import feature_map

        assert feature_map(model.backbone, batch["views"][0]).shape[-2:] == (8, 8)  # output_stride 8 at 64 px
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataLayoutError, match="train wnid"):
        ImageFolderGeometryDataModule(root=str(root), layout="tiny_imagenet").setup("fit")


def test_coco_config_reads_flat_image_folders(tmp_path):
    root = tmp_path / "coco"
    for i in range(4):
        jpeg(root / "train2017" / f"{i:012d}.jpg", seed=i)
    jpeg(root / "val2017" / "000000000100.jpg", seed=9)
    cli = instantiate(
        "coco.yaml",
        tmp_path,
        f"--data.init_args.root={root}",
        "--data.init_args.batch_size=2",
        "--data.init_args.image_size=32",
        *SMALL_RESNET,
    )
    assert (
        cli.datamodule.num_classes == 2
        and cli.trainer.max_epochs == 800
        and cli.trainer.limit_val_batches == 0
    )
    batch = one_training_batch(cli)
    assert batch["views"][1].shape == (2, 3, 32, 32) and batch["flips"].shape == (2, 2)
    loss = cli.model.training_step(batch, 0)  # DenseCL + Hough on the flat-folder batch
    assert torch.isfinite(loss)
    (root / "empty").mkdir()
    with pytest.raises(DataLayoutError, match="empty has no images"):
        ImageFolderGeometryDataModule(root=str(root), layout="flat", train_dir="empty").setup("fit")
    with pytest.raises(DataLayoutError, match="train2017 is missing"):
        ImageFolderGeometryDataModule(root=str(tmp_path / "none"), layout="flat", train_dir="train2017")


def test_voc_seg_config_instantiates_on_a_voc_fixture(tmp_path):
    write_voc(tmp_path / "VOC2012", {"aug": ["a", "b"], "val": ["c"]})
    (tmp_path / "VOC2012" / "SegmentationClass").rename(tmp_path / "VOC2012" / "SegmentationClassAug")
    cli = instantiate(
        "voc_seg.yaml",
        tmp_path,
        f"--data.init_args.root={tmp_path / 'VOC2012'}",
        "--data.init_args.crop_size=32",
        "--data.init_args.eval_size=32",
        "--data.init_args.batch_size=2",
        "--model.init_args.backbone=resnet18",
        "--model.init_args.head_channels=8",
    )
    assert cli.model.hparams.num_classes == 21 and cli.trainer.max_steps == 20000
    x, mask = one_training_batch(cli)
    assert x.shape == (2, 3, 32, 32) and mask.shape == (2, 32, 32)
    assert cli.model(x).shape == (2, 21, 32, 32)


def test_sample_photos_demo_trains_two_steps(tmp_path):
    dm = SamplePhotosGeometryDataModule(n_train=4, image_size=32, batch_size=2)
    dm.setup("fit")
    assert len(dm.train_set) == 4 and len(dm.bank_set) == 26 and len(dm.test_set) == 24
    assert sorted({dm.test_set[i][1] for i in range(24)}) == [0, 1]
    cli = LitCLI(
        args=[
            "fit",
            "-c",
            str(CONFIGS / "sample_photos.yaml"),
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=0",
            "--trainer.log_every_n_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
            "--data.init_args.image_size=32",
            "--data.init_args.batch_size=8",
            "--model.init_args.queue_size=64",
            "--test_after_fit=false",
        ]
    )
    assert cli.trainer.global_step == 2 and int(cli.model.queue_ptr) == 16
    metrics = sorted((tmp_path / "logs").rglob("metrics.csv"))[-1].read_text()
    assert "train/pairs/hough_step" in metrics and "train/pairs/argmax_step" in metrics
