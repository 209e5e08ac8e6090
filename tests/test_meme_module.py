"""MEMEModule: experts assembled from separate checkpoints, training modes, per-expert clipping, configs via the CLI."""

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from callbacks.ema import EMA
from cli import LitCLI
from datamodules.images import DigitsDataModule
from lightning_modules.meme.module import MEMEModule, RoutedExperts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "meme").glob("*.yaml"))
NET = {"block_out_channels": [8, 16], "head_dim": 4, "norm_num_groups": 4}
FAST = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def tiny(**kwargs) -> MEMEModule:
    args = {
        "input_shape": (1, 8, 8),
        "expert_net": NET,
        "ratio_stage_scale": [1.0, 0.8],
        "lr": 1e-3,
        "sample_steps": 8,
        **kwargs,
    }
    return MEMEModule(**args)


def fit(module, tmp_path, steps, callbacks=()):
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        callbacks=list(callbacks),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, DigitsDataModule(batch_size=16, holdout=400))
    return trainer


def test_experts_assembled_from_separate_checkpoints_sample_like_the_all_in_one_module(tmp_path):
    paths, trained = [], []
    for e in range(4):  # one run per expert (a SLURM array), each with its own EMA
        L.seed_everything(e)
        module = tiny(expert_index=e)
        trainer = fit(module, tmp_path, 1, [EMA(decay=0.5)])
        assert isinstance(module.net, torch.nn.Module) and not isinstance(module.net, RoutedExperts)
        paths.append(str(tmp_path / f"expert{e}.ckpt"))
        trainer.save_checkpoint(paths[-1])
        trained.append(module.net)  # after fit: the expert's EMA weights
    all_in_one = tiny()
    for e in range(4):
        all_in_one.net.experts[e].load_state_dict(trained[e].state_dict())
    assembled = tiny(expert_checkpoints=paths)
    loaded = MEMEModule.from_expert_checkpoints(paths, sample_steps=8)
    indices = [0, 1, 2]
    reference = all_in_one.generate(indices)
    torch.testing.assert_close(assembled.generate(indices), reference)
    torch.testing.assert_close(loaded.generate(indices), reference)
    assert not torch.allclose(tiny().generate(indices), reference)  # the weights did come from the files
    with pytest.raises(ValueError, match="holds expert 1, expected expert 0"):
        tiny(expert_checkpoints=[paths[1], paths[0], *paths[2:]])
    with pytest.raises(ValueError, match="does not fit expert 0"):
        tiny(expert_checkpoints=paths, expert_net={**NET, "block_out_channels": [16, 16]})
    with pytest.raises(FileNotFoundError, match="expert_index n"):
        tiny(expert_checkpoints=[str(tmp_path / "missing.ckpt"), *paths[1:]])


def test_all_experts_in_one_run_each_train_on_their_own_timesteps(tmp_path):
    L.seed_everything(0)
    module = tiny(assignment="soft", p=[1.0, 1.0, 1.0, 0.0], outside_dist="uniform_outside")
    before = [{k: v.clone() for k, v in e.state_dict().items()} for e in module.net.experts]
    fit(module, tmp_path, 2)
    for e, expert in enumerate(module.net.experts):
        changed = any(not torch.equal(v, before[e][k]) for k, v in expert.state_dict().items())
        assert changed, f"expert {e} was not trained"
    t = module.timesteps.view(4, 16)  # the last step's draws, expert by expert
    for e in range(3):
        low, high = module.router.interval(e)
        assert ((t[e] >= low) & (t[e] < high)).all()
    assert (t[3] < 750).all()  # p = 0 with uniform_outside: never its own interval
    assert module.per_sample_loss.shape == (64,)


def test_one_expert_per_run_uses_the_soft_assignment(tmp_path):
    L.seed_everything(0)
    module = tiny(expert_index=1, assignment="soft", p=[0.5, 0.0, 0.5, 0.5], outside_dist="neighbors")
    fit(module, tmp_path, 1)
    t = module.timesteps
    assert ((t < 250) | (t >= 500)).all() and (t < 750).all()  # only the neighbours 0 and 2
    assert len(t) == 16


def test_gradient_clipping_is_per_expert():
    module = tiny()
    for e, expert in enumerate(module.net.experts):
        for p in expert.parameters():
            p.grad = torch.full_like(p, 10.0 if e == 0 else 1e-4)
    small = [p.grad.clone() for p in module.net.experts[1].parameters()]
    module.configure_gradient_clipping(None, gradient_clip_val=1.0, gradient_clip_algorithm="norm")
    norm0 = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in module.net.experts[0].parameters()]))
    assert norm0 == pytest.approx(1.0, rel=1e-4)
    for p, g in zip(module.net.experts[1].parameters(), small, strict=True):
        assert torch.equal(p.grad, g)  # a global norm would have scaled these too


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_meme_config_parses(path, capsys):
    base = {"digits_": "digits.yaml", "ffhq_": "ffhq.yaml"}  # overlays compose with their base config
    args = ["fit", "-c", str(path), "--print_config"]
    for prefix, name in base.items():
        if path.stem.startswith(prefix):
            args = ["fit", "-c", str(ROOT / "configs/meme" / name), "-c", str(path), "--print_config"]
    with pytest.raises(SystemExit):
        LitCLI(args=args)
    model = yaml.safe_load(capsys.readouterr().out)["model"]
    assert model["class_path"] == "lightning_modules.meme.module.MEMEModule"
    init = model["init_args"]
    assert init["num_train_timesteps"] == 1000
    if path.stem in ("ffhq", "celebahq"):
        assert init["num_experts"] == 4 and init["vae_path"] and init["sampler"] == "ddim"
        assert init["sample_steps"] == 200 and init["assignment"] == "soft"
    if path.stem.endswith("large_unet"):
        assert init["num_experts"] == 1 and init["architecture"] == "unet"


def test_cli_trains_one_expert_and_predicts_with_assembled_checkpoints(tmp_path):
    cfg = str(ROOT / "configs/meme/digits.yaml")
    small = [
        *FAST,
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
        "--trainer.max_steps=1",
        "--trainer.limit_val_batches=0",
        "--trainer.callbacks=[]",
        "--model.init_args.expert_net.block_out_channels=[8, 16]",
        "--model.init_args.expert_net.head_dim=4",
        "--model.init_args.expert_net.norm_num_groups=4",
        "--data.init_args.batch_size=8",
        "--model.init_args.num_experts=2",  # two experts keep the test short
        "--model.init_args.ratio_base=[0.75, 0.25]",
    ]
    paths = []
    for e in range(2):
        cli = LitCLI(args=["fit", "-c", cfg, *small, f"--model.init_args.expert_index={e}"])
        paths.append(str(tmp_path / f"e{e}.ckpt"))
        cli.trainer.save_checkpoint(paths[-1])
    out = tmp_path / "samples"
    LitCLI(
        args=[
            "predict",
            "-c",
            cfg,
            *small,
            f"--model.init_args.expert_checkpoints=[{', '.join(paths)}]",
            f"--model.init_args.output_dir={out}",
            "--model.init_args.sample_steps=4",
            "--data.init_args.predict_samples=3",
        ]
    )
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png"]


def test_latent_experts_on_a_local_vq_autoencoder(tmp_path):
    from diffusers import VQModel

    torch.manual_seed(0)
    vq = VQModel(
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=3,
        norm_num_groups=4,
        num_vq_embeddings=16,
    )
    vq.save_pretrained(tmp_path / "vq")
    module = tiny(
        input_shape=(3, 16, 16), vae_path=str(tmp_path / "vq"), autoencoder="vq", latent_scaling_factor=1.0
    )
    assert module.latent_shape == (3, 8, 8) and module.vae.downsample == 2
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(module.encode(images), vq.encode(images).latents)
    module.log = lambda *args, **kwargs: None
    loss = module.training_step(images, 0)
    assert torch.isfinite(loss) and module.per_sample_loss.shape == (8,)  # 4 experts x 2 images
    assert module.generate([0]).shape == (1, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="VQModel folder"):
        tiny(input_shape=(3, 16, 16), vae_path=str(tmp_path / "nothing"), autoencoder="vq")


def test_timestep_mtl_composes_with_a_single_denoiser_and_is_refused_across_experts(tmp_path):
    from callbacks.mtl.callback import TimestepMTL

    L.seed_everything(0)
    single = tiny(num_experts=1, ratios=[[0.5, 0.5]])
    fit(single, tmp_path, 1, [TimestepMTL(method="uw", num_clusters=4)])
    counts = torch.bincount(single.timesteps // 250, minlength=4)
    assert counts.tolist() == [4, 4, 4, 4]  # the callback's stratified sampler drew the timesteps
    with pytest.raises(RuntimeError, match="expert_index"):
        fit(tiny(), tmp_path, 1, [TimestepMTL(method="uw", num_clusters=4)])


def test_timestep_mtl_inside_one_expert_clusters_that_experts_interval(tmp_path):
    from callbacks.mtl.callback import TimestepMTL

    L.seed_everything(0)
    expert = tiny(expert_index=2)  # 4 uniform experts over T = 1000: expert 2 owns [500, 750)
    mtl = TimestepMTL(method="uw", num_clusters=2, clustering="snr")
    fit(expert, tmp_path, 1, [mtl])
    assert mtl.boundaries[0] == 500 and mtl.boundaries[-1] == 750 and len(mtl.boundaries) == 3
    t = expert.timesteps
    assert t.min() >= 500 and t.max() < 750  # the stratified sampler stayed inside the expert's interval
    ids = torch.bucketize(t, torch.tensor(mtl.boundaries[1:-1]), right=True)
    assert torch.bincount(ids, minlength=2).tolist() == [8, 8]  # B / k per sub-interval
    with pytest.raises(RuntimeError, match="hard assignment"):
        soft = tiny(expert_index=2, assignment="soft", p=[0.7, 0.7, 0.7, 0.7])
        fit(soft, tmp_path, 1, [TimestepMTL(method="uw", num_clusters=2)])
