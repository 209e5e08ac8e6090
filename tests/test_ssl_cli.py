"""The SSL configs through the real CLI: digits fit + test with ScoreCL, a paper config on a CIFAR fixture, every
paper config instantiates, and the ScoreCL callback preset composes with any config."""

from pathlib import Path

import pytest
import yaml

from cli import LitCLI
from tests.test_ssl_data import write_cifar

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "scorecl"
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.check_val_every_n_epoch=1",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.batch_size=64",
    "--trainer.log_every_n_steps=1",
]


def fast_scorecl_config(tmp_path: Path) -> str:
    cfg = yaml.safe_load((CONFIGS / "simclr_digits_scorecl.yaml").read_text())
    for cb in cfg["trainer"]["callbacks"]:
        if cb["class_path"].endswith("ScoreWeighting"):
            cb["init_args"].update(pretrain_steps=5, net_kwargs={"width": 8})
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_digits_scorecl_fit_then_test_from_checkpoint(tmp_path):
    cfg = fast_scorecl_config(tmp_path)
    fit = LitCLI(args=["fit", "-c", cfg, *FAST])
    results = fit.test_results["last"]
    for key in ("test/knn20/acc1", "test/knn20/acc5", "test/knn200/acc1", "test/linear/acc1"):
        assert 0.0 <= results[key] <= 1.0
    assert results["test/knn20/acc1"] > 0.5  # k-NN on digits features is far above chance (10%)
    metrics = sorted((tmp_path / "logs").rglob("metrics.csv"))[-1].read_text()
    assert "scorecl/w_mean" in metrics and "val/knn20/acc1" in metrics
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    tested = LitCLI(args=["test", "-c", cfg, *FAST, f"--ckpt_path={ckpt}"])
    logged = tested.trainer.callback_metrics
    assert float(logged["test/knn20/acc1"]) == pytest.approx(results["test/knn20/acc1"], abs=1e-6)
    assert float(logged["test/linear/acc1"]) == pytest.approx(results["test/linear/acc1"], abs=1e-6)


def test_cifar10_paper_config_runs_on_a_fixture(tmp_path):
    write_cifar(tmp_path / "cifar", n=8)
    cli = LitCLI(
        args=[
            "fit",
            "-c",
            str(CONFIGS / "simclr_cifar10.yaml"),
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.precision=32-true",
            "--trainer.max_steps=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
            f"--data.init_args.root={tmp_path / 'cifar'}",
            "--data.init_args.batch_size=8",
            "--data.init_args.eval_batch_size=8",
            "--data.init_args.num_workers=0",
            "--test_after_fit=true",
        ]
    )
    model = cli.model
    assert model.hparams.num_classes == 10 and tuple(model.hparams.input_shape) == (3, 32, 32)
    assert model.backbone.conv1.stride == (1, 1)  # CIFAR stem
    opt = cli.trainer.optimizers[0]
    assert type(opt).__name__ == "Lars"
    # lr scaled by batch / 256 (0.4 * 8 / 256), schedule at its end after the only step
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(0.4 * 8 / 256)
    assert "test/knn20/acc1" in cli.test_results["last"]


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_instantiates(name):
    cli = LitCLI(
        args=["-c", str(CONFIGS / name), "--trainer.accelerator=cpu", "--trainer.logger=false"], run=False
    )
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    has_scorecl = any(type(cb).__name__ == "ScoreWeighting" for cb in cli.trainer.callbacks)
    assert has_scorecl == name.endswith("_scorecl.yaml")


def test_callback_preset_appends_scorecl():
    cli = LitCLI(
        args=[
            "-c",
            str(CONFIGS / "vicreg_cifar100.yaml"),
            "-c",
            str(ROOT / "configs/callbacks/scorecl.yaml"),
            "--trainer.accelerator=cpu",
            "--trainer.logger=false",
        ],
        run=False,
    )
    names = [type(cb).__name__ for cb in cli.trainer.callbacks]
    assert names.count("OnlineKNN") == 2 and "ScoreWeighting" in names
