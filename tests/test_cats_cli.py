"""CATs through the real CLI on the synthetic-warp datamodule: a few steps lower the loss, test prints PCK."""

import csv
from pathlib import Path

import pytest

from cli import LitCLI

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "cats" / "synthetic.yaml")


def test_fit_on_synthetic_pairs_lowers_the_loss_and_reports_pck(tmp_path):
    args = [
        "fit",
        "-c",
        CONFIG,
        # tiny and fast: 32 px images, an 8x8 grid, 16 fixed training pairs seen repeatedly
        "--data.init_args.image_size=32",
        "--data.init_args.num_kps=20",
        "--data.init_args.n_train=16",
        "--data.init_args.n_val=8",
        "--data.init_args.n_test=8",
        "--data.init_args.batch_size=8",
        "--model.init_args.feature_size=8",
        "--model.init_args.backbone_kwargs={channels: [8, 16, 32, 64], stem_width: 8}",
        "--model.init_args.lr=2e-3",
        "--model.init_args.backbone_lr=2e-3",
        "--trainer.max_steps=24",
        "--trainer.val_check_interval=24",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ]
    cli = LitCLI(args=args)
    rows = list(csv.DictReader((Path(cli.trainer.log_dir) / "metrics.csv").read_text().splitlines()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 24
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.8 * first, (first, last)
    assert cli.model.hparams.num_classes == 1 and tuple(cli.model.hparams.input_shape) == (3, 32, 32)
    result = cli.test_results["last"]
    assert {"test/pck_0.05", "test/pck_0.1", "test/pck_0.15"} <= set(result)
    assert 0.0 <= result["test/pck_0.05"] <= result["test/pck_0.1"] <= result["test/pck_0.15"] <= 100.0


def test_paper_configs_carry_the_official_hyperparameters():
    import yaml

    for name in ("spair", "pfpascal", "spair_frozen", "pfpascal_frozen"):
        cfg = yaml.safe_load((ROOT / "configs" / "cats" / f"{name}.yaml").read_text())
        model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
        assert (model["lr"], model["backbone_lr"], model["weight_decay"]) == (3e-5, 3e-6, 0.05), name
        assert (model["milestones"], model["gamma"], cfg["trainer"]["max_epochs"]) == (
            [70, 80, 90],
            0.5,
            100,
        ), name
        assert (data["batch_size"], data["image_size"], model["feature_size"], model["beta"]) == (
            32,
            256,
            16,
            0.02,
        )
        assert model["freeze_backbone"] is name.endswith("_frozen"), name
        assert model["backbone"].startswith("resnet101") and model["pretrained"] is True
        benchmark = name.split("_")[0]
        assert data["benchmark"] == benchmark
        expected = {
            "spair": ([0, 8, 20, 21, 26, 28, 29, 30], "bbox"),
            "pfpascal": ([2, 17, 21, 22, 25, 26, 28], "image"),
        }
        assert (model["hyperpixel_ids"], model["threshold_mode"]) == expected[benchmark], name


def test_predict_on_a_folder_of_pairs_writes_flow_and_match_png(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "pairs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(folder / name)
    (folder / "pairs.csv").write_text("source,target\na.png,b.png\nb.png,a.png\n")
    out = tmp_path / "out"
    LitCLI(
        args=[
            "predict",
            "-c",
            CONFIG,
            "-c",
            str(ROOT / "configs" / "cats" / "predict.yaml"),
            f"--data.init_args.root={folder}",
            "--data.init_args.image_size=32",
            "--model.init_args.feature_size=8",
            "--model.init_args.backbone_kwargs={channels: [8, 16, 32, 64], stem_width: 8}",
            f"--trainer.callbacks.init_args.out_dir={out}",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    flows = sorted(out.glob("*_flow.npy"))
    assert [p.name for p in flows] == ["00000_b_to_a_flow.npy", "00001_a_to_b_flow.npy"]
    flow = np.load(flows[0])
    assert flow.shape == (2, 32, 32) and np.isfinite(flow).all()
    png = Image.open(out / "00000_b_to_a_matches.png")
    assert png.size == (64, 32)
    assert (tmp_path / "config.yaml").is_file()  # the run's resolved config, not in the working directory
