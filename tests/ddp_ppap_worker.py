"""DDP worker for PPAP's expert module: 2 gloo CPU processes under Lightning's ``ddp`` strategy, then references.

Called by tests/test_ppap_ddp.py through tests.ddp_runner.run_worker as ``python tests/ddp_ppap_worker.py OUT``.
The parent process imports everything once, writes the fixtures (16 random 8x8 PNGs as the "generated" set, tiny
`ImageClassifier` teacher checkpoints) and forks the two ranks of each scenario; each rank runs a real
``Trainer.fit`` (``LOCAL_RANK`` set, so Lightning treats the processes as launched externally, like torchrun) on
`PPAPDataModule` and saves what `Recorder` saw. The parent then computes the references and saves everything to
OUT:

- ``parallel``: 2 LoRA experts distilled side by side from a BatchNorm-free small_cnn teacher, 4 steps of 4 images
  per rank (2 epochs), one validation at the end. Reference: one process trains from rank 0's initial weights on the
  global batches (rank 0's images, then rank 1's) with the same t and noise each rank drew (`Recorder.replay`), and
  evaluates the final experts on each rank's validation shard as that rank did.
- ``sequential``: 3 chained LoRA experts, 2 steps each, ``ddp_find_unused_parameters_true`` (the configs' advice),
  from a teacher with BatchNorm (timm's ``test_resnet``, its shortcut BN frozen as in the ResNet-50 configs), one
  validation at the end; ModelCheckpoint writes ``last.ckpt``, which the parent reloads with
  ``PPAPExpertModule.load_from_checkpoint`` and evaluates on the ranks' validation shards.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
import torch.multiprocessing as mp
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, Subset, TensorDataset
from torchvision.utils import save_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.ppap import PPAPDataModule  # noqa: E402
from lightning_modules.classifier import ImageClassifier  # noqa: E402
from lightning_modules.metrics import PerDomainMeans  # noqa: E402
from lightning_modules.ppap.module import PPAPExpertModule  # noqa: E402

WORLD, PER_RANK, EVAL_BATCH, HOLDOUT = 2, 4, 4, 16
SCENARIOS = {
    "parallel": dict(
        backbone="small_cnn",
        num_experts=2,
        lora_targets=[r"backbone\.features\.\d+"],
        frozen_patterns=[r"^head\."],
        expert_schedule="parallel",
        max_steps=4,
        strategy="ddp",
    ),
    "sequential": dict(
        backbone="test_resnet",
        num_experts=3,
        lora_targets=[r"backbone\.layer\d+\.\d+\.conv[12]"],
        frozen_patterns=[r"downsample", r"^head\."],
        expert_schedule="sequential",
        expert_init="chain",
        steps_per_expert=2,
        max_steps=6,
        strategy="ddp_find_unused_parameters_true",
    ),
}


def trainable_state(module: PPAPExpertModule) -> dict[str, torch.Tensor]:
    """What the checkpoint keeps: the trainable parameters and the buffers of the modules that own them."""
    keep = module._trainable_keys()
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k in keep}


def teacher_state(module: PPAPExpertModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.teacher.state_dict().items()}


class Recorder(PPAPExpertModule):
    """The expert module, recording per step its batch, the (t, noise) of each expert, the experts that train,
    the trainable state before the step, the gradients the optimizer sees (after DDP's all-reduce) and the loss.

    With ``replay`` set (a list of ``(t, noise)`` in draw order) the training draws are replaced by those.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replay: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.rec: dict[str, list] = {
            k: [] for k in ("x0", "draws", "experts", "snapshots", "grads", "losses")
        }
        self._in_training_step = False

    def noised(self, x0, t, noise):
        if self._in_training_step:
            if self.replay is not None:
                t, noise = self.replay.pop(0)
            else:
                self.rec["draws"].append((t.clone(), noise.clone()))
        return super().noised(x0, t, noise)

    def training_step(self, batch, batch_idx):
        self.rec["x0"].append(batch[0].detach().clone())
        self._in_training_step = True
        try:
            loss = super().training_step(batch, batch_idx)
        finally:
            self._in_training_step = False
        self.rec["losses"].append(loss.detach().clone())
        return loss

    def on_train_batch_start(self, batch, batch_idx):
        super().on_train_batch_start(batch, batch_idx)  # the sequential chain happens here
        self.rec["experts"].append((self.global_step, self.trained_experts()))
        self.rec["snapshots"].append(trainable_state(self))

    def _log_eval(self, metric, clean, stage):
        # the synced per-interval loss and accuracy (torchmetrics gathers the ranks' sums on compute)
        self.rec.setdefault("eval", []).append({k: v.clone() for k, v in metric.compute().items()})
        super()._log_eval(metric, clean, stage)

    def on_before_optimizer_step(self, optimizer):
        self.rec["grads"].append(
            {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}
        )


def write_fixtures(tmp: Path) -> None:
    torch.manual_seed(0)
    (tmp / "generated").mkdir()
    for i in range(WORLD * PER_RANK * 2):
        save_image(torch.rand(1, 8, 8), tmp / "generated" / f"{i:06d}.png")
    for name, cfg in SCENARIOS.items():
        torch.manual_seed(1)
        teacher = ImageClassifier(
            backbone=cfg["backbone"], num_classes=10, input_shape=(1, 8, 8), pretrained=False
        )
        if cfg["backbone"] == "test_resnet":  # non-trivial running statistics, to see they never move
            for m in teacher.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
        torch.save(
            {
                "state_dict": teacher.state_dict(),
                "hyper_parameters": dict(teacher.hparams),
                "pytorch-lightning_version": L.__version__,
            },
            tmp / f"{name}_teacher.ckpt",
        )


def build(name: str, tmp: Path) -> Recorder:
    cfg = SCENARIOS[name]
    extra = {k: cfg[k] for k in ("expert_init", "steps_per_expert") if k in cfg}
    torch.manual_seed(0)
    return Recorder(
        classifier_ckpt=str(tmp / f"{name}_teacher.ckpt"),
        num_classes=10,
        in_chans=1,
        input_size=None,
        num_experts=cfg["num_experts"],
        lora_rank=4,
        lora_alpha=8.0,
        lora_targets=cfg["lora_targets"],
        frozen_patterns=cfg["frozen_patterns"],
        expert_schedule=cfg["expert_schedule"],
        lr=1e-2,
        weight_decay=0.05,
        lr_decay="linear",
        **extra,
    )


def datamodule(tmp: Path) -> PPAPDataModule:
    return PPAPDataModule(
        train="generated",
        generated_root=str(tmp / "generated"),
        labelled="digits",
        image_size=8,
        channels=1,
        holdout=HOLDOUT,
        cache_generated=True,
        batch_size=PER_RANK,
        eval_batch_size=EVAL_BATCH,
    )


def trainer(name: str, tmp: Path, devices: int, **kwargs) -> L.Trainer:
    cfg = SCENARIOS[name]
    return L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy=cfg["strategy"] if devices > 1 else "auto",
        max_steps=cfg["max_steps"],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp / name / f"devices{devices}"),
        **kwargs,
    )


def rank_main(rank: int, name: str, tmp: str, port: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    tmp = Path(tmp)
    L.seed_everything(0, verbose=False)
    module = build(name, tmp)
    init, teacher_init = trainable_state(module), teacher_state(module)
    # one validation, at the last step (as the digits configs do)
    kwargs = dict(check_val_every_n_epoch=None, val_check_interval=SCENARIOS[name]["max_steps"])
    if name == "parallel":
        kwargs["enable_checkpointing"] = False
    else:
        kwargs["callbacks"] = [
            ModelCheckpoint(dirpath=str(tmp / name / "ckpt"), save_last=True, save_top_k=0)
        ]
    fit = trainer(name, tmp, WORLD, **kwargs)
    fit.fit(module, datamodule=datamodule(tmp))
    torch.save(
        {
            "rank": fit.global_rank,
            "world_size": fit.world_size,
            "global_step": fit.global_step,
            "rec": module.rec,
            "init": init,
            "final": trainable_state(module),
            "final_all": {k: v.detach().clone() for k, v in module.state_dict().items()},
            "teacher_init": teacher_init,
            "teacher_final": teacher_state(module),
            "teacher_training": module.teacher.training,
            "metrics": {k: v.detach().clone() for k, v in fit.callback_metrics.items()},
        },
        tmp / f"{name}_rank{rank}.pt",
    )


def run_ranks(name: str, tmp: Path, port: int) -> list[dict]:
    # fork: the ranks inherit the imported libraries instead of importing them again (faster on 2 cores)
    mp.start_processes(
        rank_main, args=(name, str(tmp), str(port)), nprocs=WORLD, join=True, start_method="fork"
    )
    return [torch.load(tmp / f"{name}_rank{r}.pt", weights_only=False) for r in range(WORLD)]


def parallel_reference(tmp: Path, ranks: list[dict]) -> dict:
    """One process on the global batches with the ranks' own draws, from rank 0's initial weights."""
    recs = [r["rec"] for r in ranks]
    module = build("parallel", tmp)
    module.load_state_dict(ranks[0]["init"])
    module.replay = [
        (torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
        for a, b in zip(recs[0]["draws"], recs[1]["draws"], strict=True)
    ]
    x = torch.cat([torch.cat(pair) for pair in zip(recs[0]["x0"], recs[1]["x0"], strict=True)])
    loader = DataLoader(TensorDataset(x, torch.full((len(x),), -1)), batch_size=WORLD * PER_RANK)
    trainer("parallel", tmp, 1, enable_checkpointing=False).fit(module, train_dataloaders=loader)
    assert module.replay == [], "every recorded draw is replayed once"

    return {"rec": module.rec, "final": trainable_state(module), "val": sharded_validation(module, tmp)}


def sharded_validation(module: PPAPExpertModule, tmp: Path) -> dict[str, torch.Tensor]:
    """What the two ranks' synced validation should log for ``module``'s experts: each rank's shard (indices r,
    r + 2, ...) in batches of EVAL_BATCH with that rank's batch_idx, every image counted once."""
    dm = datamodule(tmp)
    dm.setup("validate")
    metric, clean = PerDomainMeans(module.hparams.num_experts), PerDomainMeans(1)
    module.eval()
    with torch.no_grad():
        for r in range(WORLD):
            shard = Subset(dm.eval_set, list(range(r, len(dm.eval_set), WORLD)))
            for b, batch in enumerate(DataLoader(shard, batch_size=EVAL_BATCH)):
                module._eval_step(batch, b, metric, clean)
    return {
        "acc": metric.compute()["acc"].reshape(-1),
        "loss": metric.compute()["loss"].reshape(-1),
        "count": metric.count.clone(),
        "teacher_clean_acc": clean.compute()["acc"].reshape(-1)[0],
    }


def reload_checkpoint(tmp: Path) -> dict:
    path = tmp / "sequential" / "ckpt" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    reloaded = PPAPExpertModule.load_from_checkpoint(str(path), map_location="cpu")
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    reloaded.eval()
    with torch.no_grad():
        outputs = [e(x) for e in reloaded.experts]
    return {
        "val": sharded_validation(reloaded, tmp),
        "keys": sorted(checkpoint["state_dict"]),
        "trainable_keys": sorted(reloaded._trainable_keys()),
        "state": {k: v.detach().clone() for k, v in reloaded.state_dict().items()},
        "x": x,
        "outputs": outputs,
    }


def main() -> None:
    out = sys.argv[1]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_fixtures(tmp)
        port = 29500 + os.getpid() % 2000
        result = {}
        ranks = run_ranks("parallel", tmp, port)
        result["parallel"] = {"ranks": ranks, "single": parallel_reference(tmp, ranks)}
        ranks = run_ranks("sequential", tmp, port + 1)
        result["sequential"] = {"ranks": ranks, "reload": reload_checkpoint(tmp)}
        # a module built and run the same way in one process, to compare the experts' outputs
        module = build("sequential", tmp)
        module.load_state_dict(ranks[0]["final_all"])
        module.eval()
        with torch.no_grad():
            result["sequential"]["rank0_outputs"] = [
                e(result["sequential"]["reload"]["x"]) for e in module.experts
            ]
        torch.save(result, out)


if __name__ == "__main__":
    main()
