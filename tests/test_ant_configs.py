"""ANT configs through the real CLI: paper values parse, a face config trains on an FFHQ fixture, digits predict."""

from pathlib import Path

import pytest
import yaml

from cli import LitCLI
from tests.test_diffusion_data import write_ffhq

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "ant").glob("*.yaml"))
FAST = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_ant_config_parses_with_its_values(path, capsys):
    with pytest.raises(SystemExit):
        LitCLI(args=["fit", "-c", str(path), "--print_config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    callbacks = {
        c["class_path"].rsplit(".", 1)[-1]: c.get("init_args", {}) for c in cfg["trainer"]["callbacks"]
    }
    model = cfg["model"]["init_args"]
    method = path.stem.split("_")[-1]
    paper = path.stem.startswith(("adm", "ldm"))
    assert model["num_train_timesteps"] == 1000 and model["weight_decay"] == 0.0
    assert callbacks["EMA"]["decay"] == (0.9999 if paper else 0.999)
    if paper:
        assert model["lr"] == 1e-4 and model["unet_preset"] == path.stem.split("_")[0]
        assert (model["vae_path"] is not None) == path.stem.startswith("ldm")
    if method in ("uw", "pcgrad", "nash", "stratified"):
        mtl = callbacks["TimestepMTL"]
        assert mtl["method"] == method and mtl["num_clusters"] == 5
        assert mtl["uw_lr"] == 0.025 and mtl["uw_weight_decay"] == 0.0
        assert mtl["nash_update_every"] == 25 and mtl["nash_max_grad_norm"] == 1.0
        assert cfg["data"]["init_args"]["batch_size"] % 5 == 0
    else:
        assert "TimestepMTL" not in callbacks
    best = {
        "adm_ffhq_uw": "snr",
        "adm_celebahq_uw": "timestep",
        "ldm_ffhq_pcgrad": "gradient",
        "ldm_celebahq_uw": "snr",
    }
    if path.stem in best:  # Table 1's best ANT row for each model and dataset
        assert callbacks["TimestepMTL"]["clustering"] == best[path.stem]


def test_adm_ffhq_uw_config_trains_on_an_ffhq_fixture(tmp_path):
    write_ffhq(tmp_path / "ffhq", n=12, size=32)
    args = [
        "fit",
        "-c",
        str(ROOT / "configs" / "ant" / "adm_ffhq_uw.yaml"),
        *FAST,
        f"--data.root={tmp_path / 'ffhq'}",
        "--data.init_args.image_size=16",
        "--data.init_args.batch_size=5",
        "--data.init_args.num_workers=0",
        "--data.init_args.num_eval_images=4",
        "--model.init_args.unet_preset=tiny",
        "--model.init_args.unet={block_out_channels: [16, 32]}",
        "--model.init_args.sample_steps=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
        f"--trainer.callbacks.init_args.dirpath={tmp_path / 'ckpt'}",
    ]
    cli = LitCLI(args=args)
    assert cli.model.hparams.input_shape == (3, 16, 16)  # linked from the datamodule
    assert cli.trainer.global_step == 2
    log_vars = cli.model.loss_reducer.uw.log_vars
    assert log_vars.abs().sum() > 0  # UW trained its log-variances (SNR intervals)
    assert cli.trainer.callbacks[0].boundaries == [0, 153, 394, 624, 823, 1000]


def test_digits_config_fit_then_predict_writes_pngs(tmp_path):
    common = [
        "-c",
        str(ROOT / "configs" / "ant" / "digits_uw.yaml"),
        *FAST,
        "--model.init_args.fid_feature=none",
        "--model.init_args.sample_steps=2",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}",
    ]
    fit = LitCLI(
        args=[
            "fit",
            *common,
            "--trainer.max_steps=3",
            "--trainer.val_check_interval=3",
            "--trainer.limit_val_batches=1",
        ]
    )
    ckpt = Path(fit.trainer.log_dir) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    out = tmp_path / "samples"
    LitCLI(
        args=[
            "predict",
            *common,
            f"--ckpt_path={ckpt}",
            f"--model.init_args.output_dir={out}",
            "--data.init_args.predict_samples=5",
            "--data.init_args.predict_batch_size=2",
        ]
    )
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:06d}.png" for i in range(5)]
