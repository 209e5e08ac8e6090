"""PPAP through the real CLI: expert training on generated PNGs, resumable guided sampling, data errors."""

from pathlib import Path

import pytest
import torch
from torchvision.utils import save_image

from cli import LitCLI
from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.ppap import PendingSamplesDataModule, PPAPDataModule
from lightning_modules.classifier import ImageClassifier
from lightning_modules.diffusion.module import DiffusionModule

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def save_module(module, path: Path) -> str:
    """A minimal Lightning checkpoint of ``module`` (what load_from_checkpoint reads)."""
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": "2.6.6",
        },
        path,
    )
    return str(path)


@pytest.fixture
def fixtures(tmp_path):
    torch.manual_seed(0)
    teacher = ImageClassifier(backbone="small_cnn", num_classes=10, input_shape=(1, 8, 8), pretrained=False)
    generated = tmp_path / "generated"
    generated.mkdir()
    for i in range(12):
        save_image(torch.rand(1, 8, 8), generated / f"{i:06d}.png")
    (generated / "notes.txt").write_text("ignored")
    return {
        "teacher": save_module(teacher, tmp_path / "teacher.ckpt"),
        "generated": str(generated),
        "tmp": tmp_path,
    }


def test_fit_experts_through_cli_and_sample_with_them_resumably(fixtures):
    tmp = fixtures["tmp"]
    fit = LitCLI(
        args=[
            "fit",
            "-c",
            str(ROOT / "configs/ppap/digits.yaml"),
            f"--model.init_args.classifier_ckpt={fixtures['teacher']}",
            f"--data.init_args.generated_root={fixtures['generated']}",
            "--data.init_args.batch_size=4",
            "--data.init_args.max_eval_images=20",
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            f"--trainer.logger.init_args.save_dir={tmp / 'logs'}",
            *QUIET,
        ]
    )
    metrics = fit.trainer.callback_metrics
    assert {f"val/acc_t{lo:04d}-{lo + 200:04d}" for lo in range(0, 1000, 200)} <= set(metrics)
    assert 0 < float(metrics["params/trainable_ratio"]) < 1
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(
        k.startswith("experts.") for k in state
    )  # adapters, biases: no teacher, no base weights
    assert not any(k.endswith("base_layer.weight") for k in state)

    diffusion = DiffusionModule(input_shape=(1, 8, 8), unet_preset="tiny")
    diffusion_ckpt = save_module(diffusion, tmp / "diffusion.ckpt")
    out = tmp / "samples"
    predict = [
        "predict",
        "--model=lightning_modules.ppap.sampling.PPAPGuidedSampling",
        f"--model.init_args.diffusion_ckpt={diffusion_ckpt}",
        f"--model.init_args.guide_ckpts=[{ckpt}]",
        "--model.init_args.sample_steps=2",
        f"--model.init_args.output_dir={out}",
        "--data=datamodules.ppap.PendingSamplesDataModule",
        f"--data.init_args.output_dir={out}",
        "--data.init_args.num_samples=3",
        "--trainer.accelerator=cpu",
        "--trainer.logger=false",
        f"--trainer.default_root_dir={tmp}",
        *QUIET,
    ]
    LitCLI(args=predict)
    files = sorted(p.name for p in out.glob("*.png"))
    assert len(files) == 3 and all("_y" in f for f in files)
    kept = out / files[0]
    kept_time = kept.stat().st_mtime_ns
    (out / files[1]).unlink()
    assert PendingSamplesDataModule(str(out), 3).pending() == [1]
    LitCLI(args=predict)  # resumes: only the missing sample is generated
    assert sorted(p.name for p in out.glob("*.png")) == files
    assert kept.stat().st_mtime_ns == kept_time


def test_data_errors_are_clear(fixtures, tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist"):
        PPAPDataModule(generated_root=str(tmp_path / "missing")).setup("fit")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataLayoutError, match="no PNG images"):
        PPAPDataModule(generated_root=str(empty)).setup("fit")
    with pytest.raises(DataLayoutError, match="train/<wnid>"):
        PPAPDataModule(labelled="imagefolder", labelled_root=str(tmp_path), channels=3).setup("fit")
    (Path(fixtures["generated"]) / "000099.png").write_bytes(b"not a png")
    dm = PPAPDataModule(generated_root=fixtures["generated"], batch_size=4)
    dm.setup("fit")
    with pytest.raises(CorruptImageError, match="000099.png"):
        [dm.train_set[i] for i in range(len(dm.train_set))]


def test_imagefolder_and_generated_items(fixtures, tmp_path):
    for split in ("train", "val"):
        for wnid in ("n01", "n02"):
            folder = tmp_path / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            for i in range(2):
                save_image(torch.rand(3, 12, 10), folder / f"{i}.JPEG", format="jpeg")
    dm = PPAPDataModule(
        train="labelled",
        labelled="imagefolder",
        labelled_root=str(tmp_path / "imagenet"),
        image_size=8,
        channels=3,
        flip=True,
        batch_size=2,
    )
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert sorted(int(dm.eval_set[i][1]) for i in range(4)) == [0, 0, 1, 1]  # class index = sorted wnid
    gen = PPAPDataModule(generated_root=fixtures["generated"], batch_size=4, cache_generated=True)
    gen.setup("fit")
    image, label = gen.train_set[0]
    assert image.shape == (1, 8, 8) and label == -1 and len(gen.train_set) == 12


def test_generated_training_needs_only_the_val_split_of_an_imagefolder(fixtures, tmp_path):
    """PPAP's ImageNet runs train on generated PNGs: ImageNet's train split is neither required nor listed."""
    for wnid in ("n01", "n02"):
        folder = tmp_path / "imagenet" / "val" / wnid
        folder.mkdir(parents=True)
        save_image(torch.rand(3, 12, 10), folder / "0.JPEG", format="jpeg")
    dm = PPAPDataModule(
        generated_root=fixtures["generated"],
        labelled="imagefolder",
        labelled_root=str(tmp_path / "imagenet"),
        batch_size=4,
    )
    dm.setup("fit")
    assert len(dm.train_set) == 12 and len(dm.eval_set) == 2
    labelled = PPAPDataModule(
        train="labelled", labelled="imagefolder", labelled_root=str(tmp_path / "imagenet")
    )
    with pytest.raises(DataLayoutError, match="train"):  # training on labels does need it
        labelled.setup("fit")
