"""Convert an OpenAI guided-diffusion (ADM) checkpoint into a `DiffusionModule` checkpoint.

The result is an ordinary Lightning checkpoint of `lightning_modules.diffusion.module.DiffusionModule` (a diffusers
`UNet2DModel` with ADM's exact architecture, ``learn_sigma``, ADM's noise schedule), so everything that takes one
of our diffusion checkpoints takes it: ``cli.py predict --ckpt_path`` (PPAP's unlabelled training set),
``cli.py test`` (FID/IS), and PPAP's guided sampler (``diffusion_ckpt``). The conversion is checked on the spot:
every ADM tensor must be used and every U-Net weight filled (strict load), and the file is written atomically.

    # the unconditional ImageNet-256 model PPAP guides (flags of guided-diffusion's README)
    python scripts/convert_adm_checkpoint.py --adm /path/to/256x256_diffusion_uncond.pt \\
        --out checkpoints/ppap/adm256_uncond.ckpt

    # another unconditional ADM: its MODEL_FLAGS as JSON (keys as guided-diffusion's create_model)
    python scripts/convert_adm_checkpoint.py --adm model.pt --out model.ckpt \\
        --flags '{"image_size": 64, "num_channels": 192, "num_res_blocks": 3, "channel_mult": [1, 2, 3, 4],
                  "use_new_attention_order": true, "noise_schedule": "cosine"}'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightning_modules.diffusion.adm import (  # noqa: E402
    ADM_PRESETS,
    adm_unet_kwargs,
    convert_adm_state_dict,
    load_adm_state_dict,
)
from lightning_modules.diffusion.module import DiffusionModule  # noqa: E402

# flags of guided-diffusion's diffusion (not the U-Net): T and the beta schedule
DIFFUSION_DEFAULTS = {"diffusion_steps": 1000, "noise_schedule": "linear"}


def adm_diffusion_module(flags: dict[str, Any], preset: str | None = None) -> DiffusionModule:
    """A `DiffusionModule` whose U-Net and schedule are ADM's for ``flags`` (random weights)."""
    steps = int(flags.get("diffusion_steps", DIFFUSION_DEFAULTS["diffusion_steps"]))
    schedule = flags.get("noise_schedule", DIFFUSION_DEFAULTS["noise_schedule"])
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"noise_schedule must be 'linear' or 'cosine', got {schedule!r}")
    scale = 1000 / steps  # ADM's linear schedule is defined for T = 1000 and rescaled
    net_flags = {k: v for k, v in flags.items() if k not in DIFFUSION_DEFAULTS}
    return DiffusionModule(
        input_shape=(3, int(net_flags["image_size"]), int(net_flags["image_size"])),
        unet_preset=preset or "adm256_uncond",
        unet=None if preset else adm_unet_kwargs(net_flags),
        learn_sigma=bool(net_flags["learn_sigma"]),
        num_train_timesteps=steps,
        beta_schedule=schedule,
        beta_start=scale * 1e-4,
        beta_end=scale * 0.02,
    )


def convert(
    adm_path: str, out_path: str, preset: str | None = "adm256_uncond", flags: dict | None = None
) -> Path:
    """Convert ``adm_path`` (an ADM state dict) into the `DiffusionModule` checkpoint ``out_path``."""
    if flags is not None:
        full = {**ADM_PRESETS["adm256_uncond"], **DIFFUSION_DEFAULTS, **flags}
        preset = None
    else:
        if preset not in ADM_PRESETS:
            raise ValueError(
                f"unknown ADM preset {preset!r}; choose one of {sorted(ADM_PRESETS)} or pass flags"
            )
        full = {**ADM_PRESETS[preset], **DIFFUSION_DEFAULTS}
    state = load_adm_state_dict(adm_path)
    module = adm_diffusion_module(full, preset)
    converted = convert_adm_state_dict(state, {k: v for k, v in full.items() if k not in DIFFUSION_DEFAULTS})
    try:
        module.net.load_state_dict(converted, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{adm_path!r} does not match the ADM flags {full}: {e}. Pass the checkpoint's MODEL_FLAGS with --flags."
        ) from e
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    checkpoint = {
        "state_dict": module.state_dict(),
        # as a checkpoint written by `cli.py fit` (LightningCLI reads the class from it for --ckpt_path)
        "hyper_parameters": {
            **dict(module.hparams),
            "_class_path": f"{DiffusionModule.__module__}.DiffusionModule",
        },
        "pytorch-lightning_version": L.__version__,
        "epoch": 0,
        "global_step": 0,
        "converted_from": str(adm_path),
    }
    torch.save(checkpoint, tmp)
    tmp.replace(out)  # never a half-written checkpoint
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adm", required=True, help="guided-diffusion checkpoint (.pt state dict)")
    parser.add_argument("--out", required=True, help="DiffusionModule checkpoint to write (.ckpt)")
    parser.add_argument("--preset", default="adm256_uncond", choices=sorted(ADM_PRESETS))
    parser.add_argument("--flags", default=None, help="ADM MODEL_FLAGS as JSON (instead of --preset)")
    args = parser.parse_args(argv)
    flags = json.loads(args.flags) if args.flags else None
    out = convert(args.adm, args.out, args.preset, flags)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
