"""The real CLI on the quickstart config: fit/test, metadata links, config saving, --print_config, bad keys."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cli import LitCLI

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")

# Few steps, validation every 10, a SWAD that converges at once, logs in tmp.
FAST = [
    "--trainer.max_steps=40",
    "--data.init_args.steps_per_epoch=10",
    "--data.init_args.batch_size=8",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def fast_config(tmp_path: Path) -> str:
    """The quickstart config with a SWAD whose valley opens at the first validation and never closes."""
    cfg = yaml.safe_load(Path(QUICKSTART).read_text())
    cfg["trainer"]["callbacks"][0]["init_args"].update(n_converge=1, n_tolerance=100, tolerance_ratio=10.0)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_fit_links_metadata_and_tests_weight_variants(tmp_path):
    cli = LitCLI(args=["fit", "-c", fast_config(tmp_path), *FAST])
    model, dm = cli.model, cli.datamodule
    assert model.hparams.num_classes == dm.num_classes == 10
    assert tuple(model.hparams.input_shape) == tuple(dm.input_shape) == (1, 16, 16)
    assert model.hparams.domain_names == dm.domain_names
    assert set(cli.test_results) == {"last", "swad", "iid"}
    assert "test/acc/0deg" in cli.test_results["swad"]
    log_dir = Path(cli.trainer.log_dir)
    assert json.loads((log_dir / "test_results.json").read_text()) == cli.test_results
    assert (log_dir / "config.yaml").is_file()
    # averaging happened: the averaged weights differ from the last iterate
    assert cli.test_results["swad"]["test/loss"] != cli.test_results["last"]["test/loss"]


def test_cli_test_from_checkpoint_evaluates_swad_weights(tmp_path):
    cfg = fast_config(tmp_path)
    fit = LitCLI(args=["fit", "-c", cfg, *FAST])
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    proc = subprocess.run(
        [sys.executable, "cli.py", "test", "-c", cfg, *FAST, f"--ckpt_path={ckpt}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics_csv = sorted(Path(tmp_path / "logs").rglob("metrics.csv"))[-1].read_text().splitlines()
    header, values = metrics_csv[0].split(","), metrics_csv[-1].split(",")
    tested_acc = float(values[header.index("test/acc")])
    assert tested_acc == pytest.approx(fit.test_results["swad"]["test/acc"], abs=1e-6)
    ck = torch.load(ckpt, weights_only=False)
    assert "swad_live_state_dict" in ck


def test_rerun_overwrites_saved_config(tmp_path):
    cfg = fast_config(tmp_path)
    args = [
        "fit",
        "-c",
        cfg,
        *FAST,
        "--trainer.max_steps=10",
        "--trainer.logger.init_args.version=fixed",
        "--test_after_fit=false",
    ]
    LitCLI(args=args)
    LitCLI(args=args)  # the stock SaveConfigCallback would refuse to overwrite config.yaml
    assert (tmp_path / "logs" / "quickstart" / "fixed" / "config.yaml").is_file()


def test_print_config_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit):
        LitCLI(args=["fit", "-c", QUICKSTART, "--print_config"])
    first = capsys.readouterr().out
    saved = tmp_path / "printed.yaml"
    saved.write_text(first)
    with pytest.raises(SystemExit):
        LitCLI(args=["fit", "-c", str(saved), "--print_config"])
    assert capsys.readouterr().out == first
    assert "RotatedDigitsDataModule" in first and "callbacks.SWAD" in first


def test_omegaconf_interpolation_in_configs(tmp_path, capsys):
    cfg = yaml.safe_load(Path(QUICKSTART).read_text())
    cfg["data"]["init_args"]["eval_batch_size"] = "${data.init_args.batch_size}"
    path = tmp_path / "interp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        LitCLI(args=["fit", "-c", str(path), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["eval_batch_size"] == cfg["data"]["init_args"]["batch_size"]


def test_wrong_config_key_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exc:
        LitCLI(args=["fit", "-c", QUICKSTART, "--model.init_args.learning_rat=0.1"])
    assert exc.value.code != 0
    assert "learning_rat" in capsys.readouterr().err
