"""Paper configs run through the real CLI on a tiny PACS tree in the official layout, and the LODO runner."""

import json
import statistics
from pathlib import Path

import pytest
import yaml

from cli import LitCLI
from scripts import run_lodo
from tests.test_domainbed_datamodule import make_tree

ROOT = Path(__file__).resolve().parents[1]
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")
TINY = [
    "--trainer.accelerator=cpu",
    "--trainer.max_steps=6",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--data.init_args.steps_per_epoch=2",
    "--data.init_args.batch_size=2",
    "--data.init_args.eval_batch_size=16",
    "--data.init_args.num_workers=0",
    "--data.init_args.image_size=32",
    "--model.init_args.backbone=resnet18",
    "--model.init_args.pretrained=false",
]


@pytest.mark.parametrize("name", ["pacs", "vlcs", "officehome", "terra_incognita", "domainnet"])
def test_every_paper_config_parses_with_paper_values(name, capsys):
    with pytest.raises(SystemExit):
        LitCLI(args=["fit", "-c", str(ROOT / "configs" / "swad" / f"{name}.yaml"), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    swad = cfg["trainer"]["callbacks"][0]["init_args"]
    assert cfg["model"]["init_args"]["lr"] == 5e-5 and cfg["model"]["init_args"]["freeze_bn"]
    assert cfg["data"]["init_args"]["batch_size"] == 32
    expected_f = {"vlcs": 50, "domainnet": 500}.get(name, 100)
    assert cfg["data"]["init_args"]["steps_per_epoch"] == expected_f
    assert swad["tolerance_ratio"] == (0.2 if name == "vlcs" else 0.3)
    assert cfg["trainer"]["max_steps"] == (15000 if name == "domainnet" else 5000)


def test_pacs_config_fits_and_tests_on_official_layout(tmp_path):
    root = make_tree(tmp_path / "domainbed", classes=PACS_CLASSES, per_class=3)
    args = [
        "-c",
        str(ROOT / "configs" / "swad" / "pacs.yaml"),
        f"--data.root={root}",
        "--data.test_envs=[1]",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        *TINY,
    ]
    fit = LitCLI(args=["fit", *args])
    assert fit.model.hparams.num_classes == 7
    assert set(fit.test_results) >= {"last", "iid"}
    assert "test/acc/cartoon" in fit.test_results["last"]
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    tested = LitCLI(args=["test", *args, f"--ckpt_path={ckpt}"])
    assert tested.trainer.callback_metrics["test/acc/cartoon"] >= 0


def test_missing_dataset_root_is_one_clear_error(tmp_path):
    with pytest.raises(Exception, match="PACS") as exc:
        LitCLI(
            args=["fit", "-c", str(ROOT / "configs" / "swad" / "pacs.yaml"), f"--data.root={tmp_path}", *TINY]
        )
    assert "download" in str(exc.value).lower()


def test_lodo_runner_writes_domainbed_table(tmp_path, monkeypatch):
    out = tmp_path / "lodo"
    args = [
        "-c",
        str(ROOT / "configs" / "swad" / "rotated_digits.yaml"),
        "--envs",
        "0",
        "5",
        "--seeds",
        "0",
        "1",
        "--out",
        str(out),
        "--",
        "--trainer.max_steps=20",
        "--data.init_args.steps_per_epoch=5",
        "--data.init_args.batch_size=8",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
    ]
    run_lodo.main(args)
    runs = json.loads((out / "runs.json").read_text())
    assert sorted((r["env"], r["seed"]) for r in runs) == [(0, 0), (0, 1), (5, 0), (5, 1)]
    table = (out / "table.md").read_text()
    assert "| weights | 0deg | 75deg | Avg |" in table
    assert "ERM (last iterate)" in table and "ERM (training-domain validation)" in table and "SWAD" in table
    # the Avg cell: mean over seeds of the per-seed mean over target domains
    per_seed = [statistics.fmean(r["acc"]["last"] for r in runs if r["seed"] == s) for s in (0, 1)]
    row = next(line for line in table.splitlines() if line.startswith("| ERM (last iterate)"))
    assert row.split("|")[-2].strip() == run_lodo.mean_std(per_seed)
    # --resume reuses the finished runs: nothing is trained again, the table is the same
    monkeypatch.setattr(run_lodo, "run_one", lambda *a, **k: pytest.fail("a finished run was run again"))
    run_lodo.main([*args[: args.index("--")], "--resume", *args[args.index("--") :]])
    assert (out / "table.md").read_text() == table
