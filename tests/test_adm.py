"""OpenAI ADM checkpoints in litlab: the converted diffusers U-Net computes ADM's function, the converter writes
a usable `DiffusionModule` checkpoint, learned-variance and clipped sampling follow guided-diffusion, bad input fails.
"""

import math
from pathlib import Path

import pytest
import torch

from cli import LitCLI
from datamodules.ppap import generated_files
from lightning_modules.diffusion.adm import (
    ADM_256_UNCOND,
    ADM_256_UNCOND_URL,
    build_adm_unet,
    convert_adm_state_dict,
    load_adm_state_dict,
)
from lightning_modules.diffusion.module import DiffusionModule
from lightning_modules.diffusion.router import IntervalRouter
from lightning_modules.diffusion.schedulers import build_sampler
from lightning_modules.ppap.guidance import NoiseRangeGuide, guided_sample, guided_step
from lightning_modules.ppap.sampling import load_diffusion
from scripts.convert_adm_checkpoint import convert
from tests.adm_reference import adm_forward, adm_state_dict

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[1]

# a tiny ADM: 16 px, 3 levels, attention at 8 and 4 px (as 32/16/8 at 256 px), 2 heads of 16 channels at level 1
TINY = {
    **ADM_256_UNCOND,
    "image_size": 16,
    "num_channels": 32,
    "channel_mult": (1, 2, 2),
    "attention_resolutions": (8, 4),
    "num_head_channels": 16,
}


def reference_and_converted(flags, seed=0):
    sd = adm_state_dict(flags, seed=seed)
    net = build_adm_unet(flags).eval()
    net.load_state_dict(convert_adm_state_dict(sd, flags), strict=True)
    return sd, net


@pytest.mark.parametrize("new_order", [False, True])
def test_converted_unet_computes_the_adm_function(new_order):
    flags = {**TINY, "use_new_attention_order": new_order}
    sd, net = reference_and_converted(flags)
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([7, 801])
    with torch.no_grad():
        expected = adm_forward(sd, flags, x, t)
        out = net(x, t)
    assert expected.shape == (2, 6, 16, 16) and expected.abs().mean() > 0.1
    torch.testing.assert_close(out.sample, expected[:, :3], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.variance_values, expected[:, 3:], atol=1e-4, rtol=1e-4)


def test_the_wrong_qkv_order_gives_a_different_network():
    """The legacy/new attention orders really differ, so the test above would catch a mix-up."""
    flags = {**TINY, "use_new_attention_order": True}
    sd = adm_state_dict(flags)
    net = build_adm_unet(flags).eval()
    net.load_state_dict(convert_adm_state_dict(sd, {**flags, "use_new_attention_order": False}))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([500])
    with torch.no_grad():
        assert (net(x, t).sample - adm_forward(sd, flags, x, t)[:, :3]).abs().max() > 1e-2


def test_the_adm256_preset_has_every_weight_of_the_released_model():
    """Full size, shapes only: every tensor of ADM-256 uncond maps onto the preset's U-Net, nothing left over."""
    sd = adm_state_dict(ADM_256_UNCOND, meta=True)
    converted = convert_adm_state_dict(sd, ADM_256_UNCOND)
    with torch.device("meta"):
        net = build_adm_unet(ADM_256_UNCOND)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert sum(v.numel() for v in sd.values()) == sum(p.numel() for p in net.parameters()) == 552_814_086


def write_adm(path: Path, flags=TINY, seed=0) -> dict:
    sd = adm_state_dict(flags, seed=seed)
    torch.save(sd, path)
    return sd


def test_converted_checkpoint_loads_as_a_diffusion_module_and_predicts(tmp_path):
    sd = write_adm(tmp_path / "adm.pt")
    flags = {k: TINY[k] for k in ("image_size", "num_channels", "channel_mult", "attention_resolutions")}
    ckpt = convert(
        str(tmp_path / "adm.pt"), str(tmp_path / "out" / "adm.ckpt"), flags={**flags, "num_head_channels": 16}
    )
    assert ckpt.is_file() and not list(ckpt.parent.glob(".*tmp"))
    module = DiffusionModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert module.hparams.learn_sigma and module.latent_shape == (3, 16, 16)
    assert module.scheduler.config.variance_type == "learned_range"
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([0, 999])
    with torch.no_grad():
        torch.testing.assert_close(
            module.net(x, t).sample, adm_forward(sd, TINY, x, t)[:, :3], atol=1e-4, rtol=1e-4
        )
    out = tmp_path / "samples"
    LitCLI(
        args=[
            "predict",
            "--model=lightning_modules.diffusion.module.DiffusionModule",
            "--model.init_args.sampler=ddpm",  # the learned variance is used by ancestral sampling
            "--model.init_args.sample_steps=3",
            "--model.init_args.timestep_spacing=linspace",
            "--model.init_args.clip_sample=true",
            f"--model.init_args.output_dir={out}",
            "--data=datamodules.ppap.PendingSamplesDataModule",
            f"--data.init_args.output_dir={out}",
            "--data.init_args.num_samples=2",
            "--data.init_args.batch_size=2",
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
            f"--ckpt_path={ckpt}",
        ]
    )
    assert sorted(p.name for p in out.glob("*.png")) == ["000000.png", "000001.png"]


def test_ddpm_guidance_shifts_the_mean_by_the_learned_variance():
    """Mean shift ``mu + Sigma g`` with ADM's Sigma = exp(frac log beta_t + (1 - frac) log beta~_t)."""
    module = DiffusionModule(input_shape=(3, 8, 8), learn_sigma=True)
    scheduler = build_sampler(module.scheduler, "ddpm", "linspace")
    scheduler.set_timesteps(10)
    t = scheduler.timesteps[3]
    g = torch.Generator().manual_seed(0)
    x, eps, grad = (torch.randn(1, 3, 4, 4, generator=g) for _ in range(3))
    v = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1

    class Out:
        variance_values = v

    plain = guided_step(scheduler, eps, t, x, None, torch.Generator().manual_seed(1), out=Out())
    guided = guided_step(scheduler, eps, t, x, grad, torch.Generator().manual_seed(1), out=Out())
    a = scheduler.alphas_cumprod
    prev = scheduler.previous_timestep(t)
    beta = 1 - a[t] / a[prev]
    beta_tilde = (1 - a[prev]) / (1 - a[t]) * beta
    frac = (v + 1) / 2
    sigma = torch.exp(frac * math.log(beta) + (1 - frac) * math.log(beta_tilde))
    torch.testing.assert_close(guided - plain, sigma * grad, atol=1e-6, rtol=1e-4)


def test_clipped_ddim_step_is_guided_diffusions():
    """clip_sample: x0 clipped to [-1, 1] and epsilon re-derived from it (guided-diffusion's ddim_sample)."""
    module = DiffusionModule(input_shape=(3, 8, 8))
    scheduler = build_sampler(module.scheduler, "ddim", "leading", clip_sample=True)
    scheduler.set_timesteps(25)
    t, t_prev = scheduler.timesteps[20], scheduler.timesteps[21]  # 160 -> 120
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 8, 8, generator=g) * 3, torch.randn(2, 3, 8, 8, generator=g)
    got = guided_step(scheduler, eps, t, x, None)
    a, a_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t_prev]
    x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    eps_clipped = (x - a.sqrt() * x0) / (1 - a).sqrt()
    expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps_clipped
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    plain = build_sampler(module.scheduler, "ddim")
    plain.set_timesteps(25)
    unclipped = guided_step(plain, eps, t, x, None)
    assert (unclipped - expected).abs().max() > 1e-2  # the clip matters for these inputs


def test_bad_adm_checkpoints_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="256x256_diffusion_uncond.pt"):
        load_adm_state_dict(tmp_path / "missing.pt")
    assert ADM_256_UNCOND_URL.startswith("https://")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable ADM checkpoint"):
        load_adm_state_dict(tmp_path / "garbage.pt")
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an ADM state dict"):
        load_adm_state_dict(tmp_path / "other.pt")
    sd = adm_state_dict(TINY)
    with pytest.raises(ValueError, match="class-conditional"):
        convert_adm_state_dict({**sd, "label_emb.weight": torch.zeros(1000, 128)}, TINY)
    extra = {
        **sd,
        "input_blocks.99.0.in_layers.0.weight": torch.ones(32),
    }  # a tensor the flags do not describe
    with pytest.raises(ValueError, match="no place in the U-Net"):
        convert_adm_state_dict(extra, TINY)
    four_levels = adm_state_dict({**TINY, "channel_mult": (1, 2, 2, 2)})  # another architecture
    with pytest.raises(ValueError, match="has no 'output_blocks"):
        convert_adm_state_dict(four_levels, TINY)
    with pytest.raises(ValueError, match="resblock_updown"):
        convert_adm_state_dict(sd, {**TINY, "resblock_updown": False})
    write_adm(tmp_path / "adm.pt")
    with pytest.raises(ValueError, match="does not match the ADM flags"):  # wrong width for these weights
        convert(str(tmp_path / "adm.pt"), str(tmp_path / "x.ckpt"), flags={**TINY, "num_channels": 64})
    assert not (tmp_path / "x.ckpt").exists()


def test_fit_refuses_a_learned_variance_model():
    module = DiffusionModule(input_shape=(3, 16, 16), unet=None, learn_sigma=True)
    with pytest.raises(NotImplementedError, match="hybrid loss"):
        module.setup("fit")


def test_ppap_guides_a_converted_adm(tmp_path):
    """PPAP's sampler on a converted ADM: s = 0 is the module's own DDIM sampling; guidance moves the samples
    (DDIM score correction, and DDPM mean shift by the learned variance)."""
    write_adm(tmp_path / "adm.pt")
    ckpt = convert(str(tmp_path / "adm.pt"), str(tmp_path / "adm.ckpt"), flags=TINY)
    diffusion = load_diffusion(str(ckpt))
    diffusion.eval_args.update(sample_steps=3, clip_sample=True)
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    guide = NoiseRangeGuide([classifier], IntervalRouter.uniform(1000, 1))
    labels, seeds = torch.tensor([1, 3]), [5, 6]
    unguided = guided_sample(diffusion, guide, labels, seeds, scale=0.0)
    torch.testing.assert_close(unguided, diffusion.generate([5, 6]))
    assert (guided_sample(diffusion, guide, labels, seeds, scale=50.0) - unguided).abs().max() > 1e-3
    ddpm = [guided_sample(diffusion, guide, labels, seeds, s, sampler="ddpm") for s in (0.0, 50.0)]
    assert torch.isfinite(ddpm[1]).all() and (ddpm[1] - ddpm[0]).abs().max() > 1e-3


def test_paper_scale_generation_and_sampling_configs_run_on_a_converted_adm(tmp_path):
    """configs/ppap/adm256_generate.yaml and imagenet_sample.yaml, on CPU with a tiny converted ADM."""
    write_adm(tmp_path / "adm.pt")
    ckpt = convert(str(tmp_path / "adm.pt"), str(tmp_path / "adm.ckpt"), flags=TINY)
    cpu = [
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.enable_progress_bar=false",
    ]
    generated = tmp_path / "generated"
    generate = [
        "predict",
        "-c",
        str(ROOT / "configs/ppap/adm256_generate.yaml"),
        "--model.init_args.sample_steps=2",
        f"--model.init_args.output_dir={generated}",  # the data module follows the model's folder
        "--data.init_args.num_samples=2",
        *cpu,
        f"--ckpt_path={ckpt}",
    ]
    LitCLI(args=generate)
    images = sorted(generated.rglob("*.png"))
    assert [str(p.relative_to(generated)) for p in images] == ["0000/000000.png", "0000/000001.png"]  # shards
    assert generated_files(str(generated)) == images  # what PPAP's expert training reads
    kept = images[0].stat().st_mtime_ns
    images[1].unlink()  # an interrupted run: the rerun makes only the missing sample
    LitCLI(args=generate)
    assert images[1].is_file() and images[0].stat().st_mtime_ns == kept
    with pytest.raises(ValueError, match="differs from the model's output folder"):
        LitCLI(args=[*generate, f"--data.init_args.output_dir={tmp_path / 'elsewhere'}"])
    guided = tmp_path / "guided"
    cli = LitCLI(
        args=[
            "predict",
            "-c",
            str(ROOT / "configs/ppap/imagenet_sample.yaml"),
            f"--model.init_args.diffusion_ckpt={ckpt}",
            "--model.init_args.guide_ckpts=null",
            "--model.init_args.sample_steps=2",
            f"--model.init_args.output_dir={guided}",
            "--data.init_args.num_samples=2",
            *cpu,
        ]
    )
    assert cli.model.diffusion.eval_args["clip_sample"] is True
    assert cli.model.diffusion.eval_args["final_alpha_one"] is True
    assert len(list(guided.glob("00000[01]_y*.png"))) == 2


def test_samplers_respace_as_guided_diffusion():
    """DDIM-25 with `leading` is ADM's "ddim25" (t = 0, 40, ..., 960); DDPM-250 with `linspace` is ADM's "250"
    (round(i * 999 / 249)). Also catches spacing silently falling back to diffusers' default."""
    module = DiffusionModule(input_shape=(3, 8, 8), learn_sigma=True)
    ddim = build_sampler(module.scheduler, "ddim", "leading")
    ddim.set_timesteps(25)
    assert sorted(ddim.timesteps.tolist()) == list(range(0, 1000, 40))
    ddpm = build_sampler(module.scheduler, "ddpm", "linspace")
    ddpm.set_timesteps(250)
    assert sorted(ddpm.timesteps.tolist()) == [round(i * 999 / 249) for i in range(250)]
    trailing = build_sampler(module.scheduler, "ddim", "trailing")
    trailing.set_timesteps(25)
    assert trailing.timesteps[0] == 999


def test_final_ddim_step_returns_the_clipped_x0_prediction_with_final_alpha_one():
    """guided-diffusion's last DDIM step (alpha_bar_prev = 1) returns the clipped x0; diffusers' default does not."""
    module = DiffusionModule(input_shape=(3, 8, 8))
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    a = module.scheduler.alphas_cumprod[0]
    x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    last = {}
    for final_alpha_one in (True, False):
        scheduler = build_sampler(module.scheduler, "ddim", "leading", True, final_alpha_one)
        scheduler.set_timesteps(25)
        assert int(scheduler.timesteps[-1]) == 0
        last[final_alpha_one] = guided_step(scheduler, eps, scheduler.timesteps[-1], x, None)
    torch.testing.assert_close(last[True], x0)
    assert (last[False] - x0).abs().max() > 1e-3


def test_clipped_guided_ddim_step_follows_guided_diffusions_condition_score():
    """With clip_sample, guidance corrects the epsilon of the *clipped* x0 and the step does not clip again."""
    module = DiffusionModule(input_shape=(3, 8, 8))
    scheduler = build_sampler(module.scheduler, "ddim", "leading", clip_sample=True)
    scheduler.set_timesteps(25)
    t, t_prev = scheduler.timesteps[20], scheduler.timesteps[21]
    g = torch.Generator().manual_seed(0)
    x, eps, grad = (torch.randn(2, 3, 8, 8, generator=g) * k for k in (3.0, 1.0, 2.0))
    a, a_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t_prev]
    x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    guided_eps = (x - a.sqrt() * x0) / (1 - a).sqrt() - (1 - a).sqrt() * grad
    guided_x0 = (x - (1 - a).sqrt() * guided_eps) / a.sqrt()
    assert guided_x0.abs().max() > 1.5  # outside [-1, 1]: a second clip would change the step
    expected = a_prev.sqrt() * guided_x0 + (1 - a_prev).sqrt() * guided_eps
    torch.testing.assert_close(guided_step(scheduler, eps, t, x, grad), expected, atol=1e-5, rtol=1e-5)
    assert scheduler.config.clip_sample  # the caller's scheduler is unchanged
