"""PPAPExpertModule: N guidance experts for N noise intervals, trained by data-free distillation (PPAP), or the
supervised baselines of the paper from the same code.

- Teacher: the off-the-shelf classifier (`nets.load_classifier`), frozen (``requires_grad_(False)``) and always in
  eval mode, so DDP sees no unused parameters and its BatchNorm statistics never move.
- Experts: N copies of the teacher, each owning the half-open interval ``[lo, hi)`` of the shared `IntervalRouter`.
  ``tuning: lora`` injects peft LoRA (rank 16, alpha 8) into the layers ``lora_targets`` names and trains only
  LoRA, the BatchNorm parameters and the biases (minus ``frozen_patterns``); ``tuning: full`` trains everything.
- Step: x0 from the batch, for each trained expert ``t ~ U[lo, hi)`` and ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps``
  (the diffusion model's schedule). ``target: kd`` distils ``softmax(teacher(x0) / T)`` into ``expert(x_t)``
  (`kd_loss`, T = 0.25, temperature on the teacher only); ``target: labels`` uses cross-entropy on the labels.
- Which experts train (``expert_schedule``):
  ``parallel`` (default): all experts every step, the loss is the sum of their losses, so each expert gets exactly
  the gradient it would get alone: N independent experts ("fresh") trained side by side;
  ``sequential``: expert ``min(step // steps_per_expert, N - 1)`` trains, the learning rate anneals linearly to 0
  within each expert, and ``expert_init: chain`` starts expert i+1 from expert i's weights and AdamW state (the
  official code's order); under DDP use ``strategy: ddp_find_unused_parameters_true`` (idle experts get no grad);
  ``expert_index: i`` trains expert i only (one run per expert, e.g. a SLURM array); ``init_from_ckpt`` warm-starts
  it from the trained expert of another such run (the chain across runs).
- Baselines: ``offtheshelf`` needs no training (the teacher guides, `offtheshelf_guide`); ``finetune`` is
  ``num_experts: 1, tuning: full, target: labels``; ``multi_experts`` is ``num_experts: 5, tuning: full,
  target: labels``.
- Validation/test: per-interval top-1 accuracy of the owning expert on noised labelled images (seeded t and noise,
  identical every evaluation), and the teacher's accuracy on the clean images.
- Checkpoints hold the trainable parameters only (LoRA, BN, biases) and the buffers of the trained experts (the
  running statistics of all their BatchNorms, frozen ones included); the frozen teacher and base weights are
  rebuilt from their source (timm weights or the teacher checkpoint) when loading.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.common import check_finite_loss
from lightning_modules.diffusion.router import IntervalRouter
from lightning_modules.diffusion.schedulers import build_train_scheduler
from lightning_modules.metrics import PerDomainMeans
from lightning_modules.ppap.guidance import NoiseRangeGuide
from lightning_modules.ppap.nets import (
    GuideNet,
    InputAdapter,
    add_lora,
    count_parameters,
    load_classifier,
    merged_copy,
)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 0.25,
    reduction: Literal["mean", "batchmean"] = "mean",
) -> torch.Tensor:
    """``KL(softmax(z_T / T) || softmax(z_S))``: temperature on the teacher only (PPAP's official code).

    ``mean`` averages over batch x classes (the official `F.kl_div` default); ``batchmean`` sums over classes and
    averages over the batch (the true KL per sample).
    """
    if reduction not in ("mean", "batchmean"):
        raise ValueError(f"kd_reduction must be 'mean' or 'batchmean', got {reduction!r}")
    log_target = (teacher_logits.float() / temperature).log_softmax(dim=1)
    log_student = student_logits.float().log_softmax(dim=1)
    per_sample = (log_target.exp() * (log_target - log_student)).sum(dim=1)
    return per_sample.mean() if reduction == "batchmean" else per_sample.sum() / log_target.numel()


class _FrozenTeacher(GuideNet):
    """A GuideNet that stays in eval mode and has no trainable parameters."""

    def train(self, mode: bool = True) -> _FrozenTeacher:
        return super().train(False)


class PPAPExpertModule(L.LightningModule):
    """Noise-range guidance experts (see the module docstring).

    Args:
        classifier, classifier_ckpt, num_classes, in_chans, pretrained, pretrained_path: the off-the-shelf
            classifier (`nets.load_classifier`): a timm name or an `ImageClassifier` checkpoint.
        input_size, mean, std: the classifier's input adapter (resize, normalisation of [0, 1] images);
            mean/std None feeds [-1, 1] images as they are.
        normalize_student: experts see the adapted input like the teacher; False gives them the raw [-1, 1]
            ``x_t`` (resized only), as the official ResNet code does.
        num_experts, boundaries: the experts' intervals (uniform by default; boundaries ``[0, ..., T]``).
        num_train_timesteps, beta_schedule, beta_start, beta_end: the diffusion model's noise schedule.
        target: ``kd`` (data-free distillation) or ``labels`` (supervised baselines).
        tuning: ``lora`` or ``full`` fine-tuning of each expert.
        lora_rank, lora_alpha, lora_dropout, lora_targets: peft LoRA (targets: module-name regexes).
        train_norm, train_bias, frozen_patterns: extra trainable parameters with LoRA (see `nets.add_lora`).
        temperature, kd_reduction: `kd_loss`.
        expert_schedule, expert_index, expert_init, steps_per_expert, init_from_ckpt: which experts train when.
        lr, weight_decay, lr_decay: AdamW and its schedule (``linear`` to 0 over the run, or per expert when
            sequential; ``constant``).
        eval_seed: seed of the evaluation timesteps and noise.
    """

    def __init__(
        self,
        classifier: str | None = None,
        classifier_ckpt: str | None = None,
        num_classes: int = 1000,
        in_chans: int = 3,
        pretrained: bool = True,
        pretrained_path: str | None = None,
        input_size: int | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        normalize_student: bool = True,
        num_experts: int = 5,
        boundaries: list[int] | None = None,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        target: Literal["kd", "labels"] = "kd",
        tuning: Literal["lora", "full"] = "lora",
        lora_rank: int = 16,
        lora_alpha: float = 8.0,
        lora_dropout: float = 0.0,
        lora_targets: list[str] | None = None,
        train_norm: bool = True,
        train_bias: bool = True,
        frozen_patterns: list[str] | None = None,
        temperature: float = 0.25,
        kd_reduction: Literal["mean", "batchmean"] = "mean",
        expert_schedule: Literal["parallel", "sequential"] = "parallel",
        expert_index: int | None = None,
        expert_init: Literal["fresh", "chain"] = "fresh",
        steps_per_expert: int | None = None,
        init_from_ckpt: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        lr_decay: Literal["linear", "constant"] = "linear",
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        for name, value, allowed in (
            ("target", target, ("kd", "labels")),
            ("tuning", tuning, ("lora", "full")),
            ("expert_schedule", expert_schedule, ("parallel", "sequential")),
            ("expert_init", expert_init, ("fresh", "chain")),
            ("lr_decay", lr_decay, ("linear", "constant")),
            ("kd_reduction", kd_reduction, ("mean", "batchmean")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if expert_init == "chain" and expert_schedule != "sequential" and expert_index is None:
            raise ValueError(
                "expert_init: chain needs expert_schedule: sequential (or expert_index with init_from_ckpt)"
            )
        if tuning == "lora" and not lora_targets:
            raise ValueError(
                "tuning: lora needs lora_targets (module-name regexes, see lightning_modules/ppap/nets.py)"
            )
        self.router = (
            IntervalRouter(boundaries, num_train_timesteps)
            if boundaries
            else IntervalRouter.uniform(num_train_timesteps, num_experts)
        )
        if self.router.num_experts != num_experts:
            raise ValueError(
                f"boundaries {boundaries} give {self.router.num_experts} experts, not {num_experts}"
            )
        if expert_index is not None and not 0 <= expert_index < num_experts:
            raise ValueError(f"expert_index {expert_index} out of range for {num_experts} experts")

        base = load_classifier(
            classifier, classifier_ckpt, num_classes, in_chans, pretrained, pretrained_path
        )
        self.teacher = _FrozenTeacher(InputAdapter(input_size, mean, std), copy.deepcopy(base))
        self.teacher.requires_grad_(False).eval()
        student_adapter = (
            InputAdapter(input_size, mean, std) if normalize_student else InputAdapter(input_size)
        )
        experts = []
        for i in range(num_experts):
            net = copy.deepcopy(base)
            if tuning == "lora":
                net = add_lora(
                    net,
                    lora_targets,
                    lora_rank,
                    lora_alpha,
                    lora_dropout,
                    train_norm,
                    train_bias,
                    frozen_patterns or (),
                )
            else:
                net.requires_grad_(True)
            if expert_index is not None and i != expert_index:
                net.requires_grad_(False)
            experts.append(GuideNet(copy.deepcopy(student_adapter), net))
        self.experts = nn.ModuleList(experts)
        self.base_parameters = count_parameters(base)
        self.trainable_per_expert = count_parameters(
            self.experts[expert_index if expert_index is not None else 0], trainable_only=True
        )
        scheduler = build_train_scheduler(num_train_timesteps, beta_schedule, beta_start, beta_end)
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float(), persistent=False)
        self.val_metric = PerDomainMeans(num_experts)
        self.test_metric = PerDomainMeans(num_experts)
        self.clean_val_metric = PerDomainMeans(1)
        self.clean_test_metric = PerDomainMeans(1)
        self._active: int | None = None
        if init_from_ckpt:
            self._init_expert_from(init_from_ckpt)

    # ------------------------------------------------------------------ parts
    def guide(self, merge: bool = False) -> NoiseRangeGuide:
        """The trained experts as a `NoiseRangeGuide` (optionally with LoRA merged into the weights)."""
        experts = [merged_copy(e) if merge else e for e in self.experts]
        return NoiseRangeGuide(experts, self.router)

    def offtheshelf_guide(self) -> NoiseRangeGuide:
        """The frozen teacher as a single guide for every timestep (the off-the-shelf baseline)."""
        return NoiseRangeGuide([self.teacher], IntervalRouter.uniform(self.router.num_timesteps, 1))

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].view(-1, *([1] * (x0.dim() - 1))).to(x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def trained_experts(self) -> list[int]:
        """Indices of the experts that train at the current step."""
        hp = self.hparams
        if hp.expert_index is not None:
            return [hp.expert_index]
        if hp.expert_schedule == "parallel":
            return list(range(hp.num_experts))
        return [min(self.global_step // self._steps_per_expert(), hp.num_experts - 1)]

    def _steps_per_expert(self) -> int:
        if self.hparams.steps_per_expert:
            return int(self.hparams.steps_per_expert)
        max_steps = self.trainer.max_steps if self._trainer is not None else -1
        if max_steps is None or max_steps < 1:
            raise ValueError("sequential experts need steps_per_expert or trainer.max_steps")
        return max(1, max_steps // self.hparams.num_experts)

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x0, labels = batch[0], batch[1]
        hp = self.hparams
        teacher_logits = None
        if hp.target == "kd":
            with torch.no_grad():
                teacher_logits = self.teacher(x0)
        elif bool((labels < 0).any()):
            raise ValueError("target: labels needs labelled images (train: labelled in the datamodule)")
        total = x0.new_zeros(())
        for e in self.trained_experts():
            t = self.router.draw(e, x0.shape[0], device=self.device)
            logits = self.experts[e](self.noised(x0, t, torch.randn_like(x0)))
            if teacher_logits is not None:
                loss = kd_loss(logits, teacher_logits, hp.temperature, hp.kd_reduction)
            else:
                loss = F.cross_entropy(logits.float(), labels)
            check_finite_loss(loss, self.global_step)
            self.log(f"train/loss_expert{e}", loss.detach())
            total = total + loss
        self.log("train/loss", total.detach(), prog_bar=True)
        self.log("params/trainable_per_expert", float(self.trainable_per_expert))
        self.log("params/trainable_ratio", self.trainable_per_expert / self.base_parameters)
        return total

    def on_train_start(self) -> None:
        # different timesteps and noise on every rank (seed_everything gives every rank the same seed)
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        hp = self.hparams
        if hp.expert_schedule != "sequential" or hp.expert_index is not None:
            return
        active = self.trained_experts()[0]
        if self._active is not None and active != self._active and hp.expert_init == "chain":
            self._chain(self._active, active)
        self._active = active

    def _chain(self, src: int, dst: int) -> None:
        """Expert ``dst`` starts from expert ``src``'s trained weights and AdamW state (same on every rank)."""
        source, dest = self.experts[src], self.experts[dst]
        try:
            optimizer = self.optimizers()
        except RuntimeError:  # not attached to a trainer: weights only
            optimizer = None
        optimizer = getattr(
            optimizer, "optimizer", optimizer
        )  # the torch optimizer behind Lightning's wrapper
        with torch.no_grad():
            for (_, p_src), (_, p_dst) in zip(
                source.named_parameters(), dest.named_parameters(), strict=True
            ):
                p_dst.copy_(p_src)
                if optimizer is not None and p_src in optimizer.state:
                    optimizer.state[p_dst] = {
                        k: v.clone() if torch.is_tensor(v) else v for k, v in optimizer.state[p_src].items()
                    }
            for (_, b_src), (_, b_dst) in zip(source.named_buffers(), dest.named_buffers(), strict=True):
                b_dst.copy_(b_src)

    def _init_expert_from(self, path: str) -> None:
        """Warm-start this run's expert from the trained expert of another run's checkpoint."""
        if self.hparams.expert_index is None:
            raise ValueError("init_from_ckpt needs expert_index (one expert per run)")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        src = checkpoint["hyper_parameters"].get("expert_index")
        if src is None:
            raise ValueError(f"{path} was not trained with expert_index; cannot tell which expert to copy")
        prefix, dest = f"experts.{src}.", f"experts.{self.hparams.expert_index}."
        state = {
            dest + k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
        }
        if not state:
            raise ValueError(f"{path} holds no trained parameters of expert {src}")
        missing = set(state) - set(self.state_dict())
        if missing:
            raise ValueError(f"{path} does not match this model: unexpected keys {sorted(missing)[:3]}")
        self.load_state_dict({**self.state_dict(), **state})

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch, batch_idx: int, metric: PerDomainMeans, clean: PerDomainMeans) -> None:
        x0, labels = batch[0], batch[1]
        if bool((labels < 0).any()):
            raise ValueError("evaluation needs labelled images")
        n = x0.shape[0]
        logits = self.teacher(x0)
        clean.update(
            F.cross_entropy(logits, labels, reduction="none"), logits.argmax(1) == labels, labels * 0
        )
        for e in range(self.hparams.num_experts):
            g = torch.Generator().manual_seed(self.hparams.eval_seed * 1_000_003 + 10_007 * batch_idx + e)
            t = self.router.draw(e, n, generator=g)
            noise = torch.randn(x0.shape, generator=g).to(x0)
            logits = self.experts[e](self.noised(x0, t.to(self.device), noise))
            losses = F.cross_entropy(logits.float(), labels, reduction="none")
            metric.update(losses, logits.argmax(1) == labels, torch.full((n,), e, device=self.device))

    def _log_eval(self, metric: PerDomainMeans, clean: PerDomainMeans, stage: str) -> None:
        # torchmetrics returns 0-dim tensors for a single domain: keep one entry per expert
        out = {k: v.reshape(-1) for k, v in metric.compute().items()}
        clean_out = {k: v.reshape(-1) for k, v in clean.compute().items()}
        metric.reset()
        clean.reset()
        if not bool(out["present"].any()):
            return
        self.log(f"{stage}/acc", out["acc"].nanmean().float(), prog_bar=True)
        self.log(f"{stage}/teacher_clean_acc", clean_out["acc"][0].float())
        for e in range(self.hparams.num_experts):
            lo, hi = self.router.interval(e)
            self.log(f"{stage}/acc_t{lo:04d}-{hi:04d}", out["acc"][e].float())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, self.val_metric, self.clean_val_metric)

    def on_validation_epoch_end(self) -> None:
        self._log_eval(self.val_metric, self.clean_val_metric, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, self.test_metric, self.clean_test_metric)

    def on_test_epoch_end(self) -> None:
        self._log_eval(self.test_metric, self.clean_test_metric, "test")

    # ------------------------------------------------------------------ optimization
    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.experts.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_decay == "constant":
            return optimizer
        if hp.expert_schedule == "sequential" and hp.expert_index is None:
            period = self._steps_per_expert()
        else:
            period = self.trainer.max_steps
            if period is None or period < 1:
                raise ValueError("lr_decay: linear needs trainer.max_steps (or use lr_decay: constant)")

        def factor(step: int) -> float:
            return (
                1.0 - (step % period) / period if hp.expert_schedule == "sequential" else 1.0 - step / period
            )

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints: trainable state only
    def _trainable_keys(self) -> set[str]:
        """The trainable parameters, and every buffer of an expert that trains: its frozen BatchNorms (e.g.
        ResNet's shortcut BN under ``frozen_patterns``) run in train mode too, so their statistics move."""
        keys = {f"experts.{n}" for n, p in self.experts.named_parameters() if p.requires_grad}
        for i, expert in enumerate(self.experts):
            if any(p.requires_grad for p in expert.parameters()):
                keys.update(f"experts.{i}.{b}" for b, _ in expert.named_buffers())
        return keys

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self._trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Frozen weights (teacher, base weights) come from their source, so the checkpoint may omit them."""
        own = self.state_dict()
        unexpected = set(state_dict) - set(own)
        if strict and unexpected:
            raise RuntimeError(f"unexpected keys in the PPAP checkpoint: {sorted(unexpected)[:5]}")
        return super().load_state_dict({**own, **state_dict}, strict=strict, assign=assign)
