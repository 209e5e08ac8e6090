"""DiffusionModule: sampling determinism, EMA weights in predict, checkpoints, latent space, clear errors."""

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from callbacks.ema import EMA
from callbacks.sample_grid import SampleGrid
from datamodules.images import DigitsDataModule
from lightning_modules.diffusion.module import DiffusionModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_UNET = {"block_out_channels": [16, 32], "norm_num_groups": 8}


def tiny_module(**kwargs) -> DiffusionModule:
    args = {"input_shape": (1, 8, 8), "unet": TINY_UNET, "lr": 1e-3, "sample_steps": 5, **kwargs}
    return DiffusionModule(**args)


def trainer(tmp_path: Path, steps: int, callbacks=(), **kwargs) -> L.Trainer:
    args = {
        "accelerator": "cpu",
        "max_steps": steps,
        "callbacks": list(callbacks),
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "default_root_dir": str(tmp_path),
        "enable_checkpointing": False,
        **kwargs,
    }
    return L.Trainer(**args)


def test_ddim_sampling_is_deterministic_per_sample_index():
    torch.manual_seed(0)
    module = tiny_module()
    a = module.generate([0, 1, 2, 3])
    b = module.generate([2, 3])  # other batching, same indices
    c = module.generate([5])
    assert a.shape == (4, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a[2:], b)
    assert not torch.allclose(a[:1], c)
    module.eval_args["sample_seed"] = 1
    assert not torch.allclose(module.generate([0]), a[:1])
    ddpm = tiny_module(sampler="ddpm")
    ddpm.load_state_dict(module.state_dict())
    ddpm.eval_args["sample_seed"] = 0
    torch.testing.assert_close(ddpm.generate([0, 1]), ddpm.generate([0, 1]))


def test_training_reduces_the_loss_and_exposes_the_mtl_contract(tmp_path):
    L.seed_everything(0)
    module = tiny_module(lr=3e-3)
    dm = DigitsDataModule(batch_size=20)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((pl_module.per_sample_loss.detach().clone(), pl_module.timesteps.clone()))

    trainer(tmp_path, 30, [Spy()]).fit(module, datamodule=dm)
    assert len(seen) == 30
    losses, t = seen[-1]
    assert losses.shape == t.shape == (20,)
    assert t.min() >= 0 and t.max() < 1000
    first = torch.stack([s[0].mean() for s in seen[:5]]).mean()
    last = torch.stack([s[0].mean() for s in seen[-5:]]).mean()
    assert last < first


def test_timestep_sampler_and_loss_reducer_hooks_are_used(tmp_path):
    module = tiny_module()
    module.timestep_sampler = lambda n, device: torch.full((n,), 7, device=device)
    calls = []

    def reducer(mod, losses, t):
        calls.append(t.clone())
        return 2 * losses.mean()

    module.loss_reducer = reducer
    trainer(tmp_path, 2).fit(module, datamodule=DigitsDataModule(batch_size=10))
    assert len(calls) == 2 and all(bool((t == 7).all()) for t in calls)
    bad = tiny_module()
    bad.timestep_sampler = lambda n, device: torch.full((n,), 1000)
    with pytest.raises(ValueError, match="invalid timesteps"):
        trainer(tmp_path, 1).fit(bad, datamodule=DigitsDataModule(batch_size=10))


def test_predict_uses_ema_weights_and_checkpoint_round_trips(tmp_path):
    L.seed_everything(0)
    module = tiny_module()
    ema = EMA(decay=0.5)
    ckpt_dir = tmp_path / "ckpt"
    fit = trainer(
        tmp_path,
        6,
        [ema, L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
        enable_checkpointing=True,
    )
    fit.fit(module, datamodule=DigitsDataModule(batch_size=10))
    ckpt = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    ema_net = ema.ema_state_dict
    live = ckpt["ema_live_state_dict"]
    some = "conv_in.weight"
    assert not torch.allclose(live[some], ema_net[some])  # EMA differs from the live weights
    torch.testing.assert_close(ckpt["state_dict"][f"net.{some}"], ema_net[some])
    assert not any(k.startswith(("vae.", "fid.")) for k in ckpt["state_dict"])

    # predict from the checkpoint (no EMA callback): the samples are those of the EMA network
    out = tmp_path / "samples"
    fresh = tiny_module(output_dir=str(out))
    dm = DigitsDataModule(predict_samples=3, predict_batch_size=2)
    trainer(tmp_path, 1).predict(fresh, datamodule=dm, ckpt_path=str(ckpt_dir / "last.ckpt"))
    files = sorted(p.name for p in out.iterdir())
    assert files == ["000000.png", "000001.png", "000002.png"]
    reference = tiny_module()
    reference.net.load_state_dict(ema_net)
    expected = ((reference.generate([1])[0, 0] + 1) * 127.5).round().clamp(0, 255).numpy().astype(np.uint8)
    written = np.asarray(Image.open(out / "000001.png").convert("L"))
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1
    live_ref = tiny_module()
    live_ref.net.load_state_dict(live)
    assert not torch.allclose(live_ref.generate([1]), reference.generate([1]))


def test_resume_restores_live_weights_and_ema(tmp_path):
    L.seed_everything(0)
    ckpt_dir = tmp_path / "ckpt"
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True)
    trainer(tmp_path, 4, [EMA(decay=0.5), saver], enable_checkpointing=True).fit(
        tiny_module(), datamodule=DigitsDataModule(batch_size=10)
    )
    ckpt = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    seen = {}

    class AtStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["live"] = pl_module.net.conv_in.weight.detach().clone()
            seen["ema"] = ema.ema_state_dict["conv_in.weight"].detach().clone()
            seen["step"] = trainer.global_step

    ema = EMA(decay=0.5)
    trainer(tmp_path, 5, [ema, AtStart()]).fit(
        tiny_module(), datamodule=DigitsDataModule(batch_size=10), ckpt_path=str(ckpt_dir / "last.ckpt")
    )
    assert seen["step"] == 4
    torch.testing.assert_close(seen["live"], ckpt["ema_live_state_dict"]["conv_in.weight"])
    torch.testing.assert_close(seen["ema"], ckpt["state_dict"]["net.conv_in.weight"])
    assert not torch.allclose(seen["live"], seen["ema"])


def test_sample_grid_writes_png(tmp_path):
    module = tiny_module()
    grid = SampleGrid(num_samples=4)
    t = trainer(
        tmp_path,
        2,
        [grid],
        limit_val_batches=1,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    t.fit(module, datamodule=DigitsDataModule(batch_size=10, eval_batch_size=10))
    assert grid.last_path is not None and grid.last_path.is_file()
    assert Image.open(grid.last_path).size[0] > 8


def test_latent_diffusion_with_a_local_vae(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=4,
        layers_per_block=1,
    )
    vae.save_pretrained(tmp_path / "vae")
    module = DiffusionModule(
        input_shape=(3, 16, 16), unet=TINY_UNET, vae_path=str(tmp_path / "vae"), sample_steps=3
    )
    assert module.latent_shape == (4, 8, 8)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = module.encode(x)
    assert z.shape == (2, 4, 8, 8)
    torch.testing.assert_close(z, vae.encode(x).latent_dist.mean * 0.18215)
    assert module.generate([0]).shape == (1, 3, 16, 16)
    assert all(not p.requires_grad for p in module.vae.parameters())
    optimized = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert optimized == {id(p) for p in module.net.parameters()}
    with pytest.raises(FileNotFoundError, match="AutoencoderKL folder"):
        DiffusionModule(input_shape=(3, 16, 16), vae_path=str(tmp_path / "missing"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text(json.dumps(dict(vae.config)))
    with pytest.raises(FileNotFoundError, match="cannot load the VAE"):
        DiffusionModule(input_shape=(3, 16, 16), vae_path=str(tmp_path / "broken"))


def test_nan_loss_stops_training(tmp_path):
    module = tiny_module()
    with torch.no_grad():
        module.net.conv_in.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="global step 0"):
        trainer(tmp_path, 1).fit(module, datamodule=DigitsDataModule(batch_size=10))
