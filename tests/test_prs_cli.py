"""PRS through the real CLI: a few steps of the digits demo, test from its checkpoint, Fourier analysis of it."""

from pathlib import Path

import pytest
import yaml

from callbacks.reparam import ReparameterizationSchedule
from cli import LitCLI
from scripts import fourier_analysis

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "prs" / "digits.yaml")


def fast(tmp_path: Path) -> list[str]:
    return [
        "--trainer.max_epochs=2",
        "--trainer.check_val_every_n_epoch=1",
        "--data.init_args.steps_per_epoch=2",
        "--data.init_args.batch_size=16",
        "--data.init_args.image_size=8",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
    ]


def test_digits_fit_switches_tests_and_feeds_the_fourier_tool(tmp_path):
    # the 30-epoch schedule squeezed into 2 epochs: deepest layer at epoch 0, first at epoch 1
    cfg = yaml.safe_load(Path(CONFIG).read_text())
    (schedule,) = [
        c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ReparameterizationSchedule")
    ]
    schedule["init_args"].update(start=0, end=1)
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(cfg))
    fit = LitCLI(args=["fit", "-c", str(path), *fast(tmp_path)])
    forms = [layer.is_attention for layer in fit.model.reparam_layers()]
    assert forms == [True, True, True, True]
    assert fit.model.hparams.num_classes == 10 and tuple(fit.model.hparams.input_shape) == (1, 8, 8)
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    fit_acc = fit.test_results["last"]["test/acc"]

    test = LitCLI(args=["test", "-c", str(path), *fast(tmp_path), f"--ckpt_path={ckpt}"])
    assert all(layer.is_attention for layer in test.model.reparam_layers())
    assert test.trainer.callback_metrics["test/acc"].item() == pytest.approx(fit_acc, abs=1e-6)

    out = tmp_path / "fourier"
    rows = fourier_analysis.main(
        ["-c", str(path), "--data.init_args.image_size=8", "--ckpt", str(ckpt), "--label", "prs"]
        + ["--num_images=32", "--out", str(out)]
    )
    assert (out.with_suffix(".csv")).is_file() and (out.with_suffix(".png")).stat().st_size > 1000
    assert {r["layer"] for r in rows} == {"stem", "block1", "block2", "block3", "block4"}
    assert {r["freq_over_pi"] for r in rows} == {0.5, 1.0}  # 8x8 input, patch 2: 4x4 maps


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("digits", "prs"),
        ("digits_conv", "never"),
        ("digits_attention", "start"),
        ("digits_oneshot", "oneshot"),
    ],
)
def test_digits_configs_pick_their_schedule(name, mode):
    cli = LitCLI(
        args=["-c", str(ROOT / "configs" / "prs" / f"{name}.yaml"), "--trainer.logger=false"], run=False
    )
    schedules = [cb for cb in cli.trainer.callbacks if isinstance(cb, ReparameterizationSchedule)]
    assert len(schedules) == 1 and schedules[0].mode == mode


PAPER_TINY = [
    "--trainer.accelerator=cpu",
    "--trainer.precision=32-true",
    "--trainer.max_steps=2",
    "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.batch_size=4",
    "--data.init_args.eval_batch_size=4",
    "--data.init_args.num_workers=0",
    "--model.init_args.backbone=prs_vit_digits",  # the paper-scale prs_vit_tiny takes ~10 s a step on 2 cores
]


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("cifar100", "prs"),
        ("cifar100_conv", "never"),
        ("cifar100_attention", "start"),
        ("cifar100_oneshot", "oneshot"),
    ],
)
def test_cifar100_configs_carry_their_schedule_and_recipe(name, mode, tmp_path):
    cli = LitCLI(
        args=[
            "-c",
            str(ROOT / "configs" / "prs" / f"{name}.yaml"),
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
        ],
        run=False,
    )
    schedule = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ReparameterizationSchedule))
    assert schedule.mode == mode and cli.trainer.max_epochs == 300
    assert cli.model.hparams.backbone == "prs_vit_tiny" and cli.model.hparams.num_classes == 100
    assert cli.model.mixup is not None and cli.model.hparams.label_smoothing == 0.1


def test_paper_configs_train_on_tiny_official_layouts(tmp_path):
    from tests.test_prs_data import write_cifar100, write_imagenet

    write_cifar100(tmp_path / "cifar")
    fit = LitCLI(
        args=[
            "fit",
            "-c",
            str(ROOT / "configs" / "prs" / "cifar100.yaml"),
            *PAPER_TINY,
            f"--data.init_args.root={tmp_path / 'cifar'}",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        ]
    )
    assert fit.trainer.global_step == 2 and "test/acc" in fit.test_results["last"]
    write_imagenet(tmp_path / "imagenet")
    fit = LitCLI(
        args=[
            "fit",
            "-c",
            str(ROOT / "configs" / "prs" / "imagenet_subset.yaml"),
            *PAPER_TINY,
            f"--data.init_args.root={tmp_path / 'imagenet'}",
            "--data.init_args.fraction=0.5",
            "--data.init_args.image_size=32",
            f"--data.init_args.subset_list={tmp_path / 'subset.txt'}",
            f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        ]
    )
    assert fit.model.hparams.num_classes == 3 and fit.trainer.global_step == 2
    assert len((tmp_path / "subset.txt").read_text().split()) == 6
