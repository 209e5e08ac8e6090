"""PPAPGuidedSampling: `cli.py predict` of class-guided samples from any diffusion module of ours.

The diffusion model is a checkpoint of ``diffusion_class`` (the core's `DiffusionModule`, or MEME's module: any
class with the attributes `guidance.guided_sample` reads). The guide is one of:

- ``guide_ckpts``: one `PPAPExpertModule` checkpoint holding all its experts (PPAP, or the ``finetune`` /
  ``multi_experts`` baselines), or one checkpoint per expert from runs with ``expert_index`` (any order);
- ``guide_ckpts`` with ``offtheshelf: true``: the frozen teacher of that checkpoint guides every step;
- no guide (``scale: 0`` or no checkpoints): unguided samples from the same noise.

Sample ``i`` starts from the noise seeded ``sample_seed * 10**6 + i`` (as `DiffusionModule.generate`) and is guided
towards class ``y_i`` drawn uniformly from a generator seeded ``label_seed * 10**6 + i``; it is written atomically
as ``<output_dir>/<i:06d>_y<y_i>.png``, so reruns with `datamodules.ppap.PendingSamplesDataModule` resume.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchvision.utils import save_image

from lightning_modules.diffusion.router import IntervalRouter
from lightning_modules.ppap.guidance import NoiseRangeGuide, guided_sample
from lightning_modules.ppap.module import PPAPExpertModule
from lightning_modules.ppap.nets import own_hyperparameters


def import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_diffusion(
    ckpt: str, class_path: str = "lightning_modules.diffusion.module.DiffusionModule"
) -> nn.Module:
    """A trained diffusion module from its checkpoint (clear error when the file is missing)."""
    if not Path(ckpt).is_file():
        raise FileNotFoundError(
            f"diffusion checkpoint {ckpt!r} does not exist. For the digits demo train it first: "
            "python cli.py fit -c configs/ant/digits.yaml (see docs/ppap.md)"
        )
    with own_hyperparameters():
        return import_class(class_path).load_from_checkpoint(ckpt, map_location="cpu").eval()


def load_guide(ckpts: list[str], offtheshelf: bool = False, merge: bool = True) -> NoiseRangeGuide:
    """The guide from `PPAPExpertModule` checkpoints (see the module docstring)."""
    if not ckpts:
        raise ValueError("no guide checkpoints given")
    for c in ckpts:
        if not Path(c).is_file():
            raise FileNotFoundError(
                f"guide checkpoint {c!r} does not exist (train it with configs/ppap/*.yaml)"
            )
    with own_hyperparameters():
        modules = [PPAPExpertModule.load_from_checkpoint(c, map_location="cpu").eval() for c in ckpts]
    if offtheshelf:
        return modules[0].offtheshelf_guide()
    if len(modules) == 1 and modules[0].hparams.expert_index is None:
        return modules[0].guide(merge=merge)
    by_index = {m.hparams.expert_index: m for m in modules}
    first = modules[0]
    n = first.hparams.num_experts
    if None in by_index or sorted(by_index) != list(range(n)) or len(modules) != n:
        raise ValueError(
            f"per-expert checkpoints must cover expert_index 0..{n - 1} once each, got {sorted(by_index, key=str)}"
        )
    router = IntervalRouter(first.router.boundaries, first.router.num_timesteps)
    for m in modules:
        if m.router.boundaries != router.boundaries:
            raise ValueError("per-expert checkpoints were trained with different intervals")
    experts = [by_index[i].guide(merge=merge).experts[i] for i in range(n)]
    return NoiseRangeGuide(experts, router)


def target_labels(indices: list[int], num_classes: int, label_seed: int) -> torch.Tensor:
    """Class ``y_i`` of sample ``i``: uniform, from a generator seeded ``label_seed * 10**6 + i``."""
    return torch.tensor(
        [
            int(
                torch.randint(
                    num_classes, (1,), generator=torch.Generator().manual_seed(label_seed * 1_000_000 + i)
                )
            )
            for i in indices
        ]
    )


class PPAPGuidedSampling(L.LightningModule):
    """Guided sampling through ``cli.py predict`` (nothing to train).

    Args:
        diffusion_ckpt, diffusion_class: the diffusion model.
        guide_ckpts, offtheshelf, merge_lora: the guide (`load_guide`).
        num_classes: classes the target labels are drawn from.
        scale: guidance scale s (official default 7.5).
        sampler, sample_steps, eta: override the diffusion model's sampling settings (None keeps them).
        timestep_spacing, clip_sample, final_alpha_one: the same for the respacing rule, the clipping of x0 and
            DDIM's last step (None keeps the module's defaults: ``leading``, no clipping, alpha_bar_0).
        sample_seed, label_seed: seeds of the initial noise and of the target classes.
        output_dir: where the PNGs go.
    """

    def __init__(
        self,
        diffusion_ckpt: str,
        diffusion_class: str = "lightning_modules.diffusion.module.DiffusionModule",
        guide_ckpts: list[str] | None = None,
        offtheshelf: bool = False,
        merge_lora: bool = True,
        num_classes: int = 10,
        scale: float = 7.5,
        sampler: str | None = "ddim",
        sample_steps: int | None = 25,
        eta: float | None = 0.0,
        timestep_spacing: str | None = None,
        clip_sample: bool | None = None,
        final_alpha_one: bool | None = None,
        sample_seed: int = 0,
        label_seed: int = 0,
        output_dir: str = "outputs/ppap_samples",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.diffusion = load_diffusion(diffusion_ckpt, diffusion_class)
        # sampling settings are not stored in diffusion checkpoints (they are evaluation arguments)
        overrides = {
            "timestep_spacing": timestep_spacing,
            "clip_sample": clip_sample,
            "final_alpha_one": final_alpha_one,
        }
        for key, value in overrides.items():
            if value is not None:
                self.diffusion.eval_args[key] = value
        self.guide = load_guide(guide_ckpts, offtheshelf, merge_lora) if guide_ckpts else None

    def sample_dir(self) -> Path:
        """Where the PNGs go (``PendingSamplesDataModule`` reads the same folder to resume)."""
        return Path(self.hparams.output_dir)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        indices = batch.flatten().tolist()
        seeds = [hp.sample_seed * 1_000_000 + i for i in indices]
        # Lightning predicts under inference mode, where no gradient (hence no guidance) can be taken
        with torch.inference_mode(False):
            labels = target_labels(indices, hp.num_classes, hp.label_seed)
            images = guided_sample(
                self.diffusion, self.guide, labels, seeds, hp.scale, hp.sample_steps, hp.sampler, hp.eta
            )
        out = self.sample_dir()
        out.mkdir(parents=True, exist_ok=True)
        for i, y, image in zip(indices, labels.tolist(), images, strict=True):
            tmp = out / f".{i:06d}.png.tmp"
            save_image((image + 1) / 2, tmp, format="png")
            tmp.replace(out / f"{i:06d}_y{y}.png")  # never a half-written file
        return torch.as_tensor(indices)
