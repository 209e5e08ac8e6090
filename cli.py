"""litlab's command line: `python cli.py {fit,validate,test,predict} -c configs/<method>/<setup>.yaml`.

One LightningCLI subclass serves every method:
- models and datamodules are picked by `class_path`/`init_args` (subclass mode), so a new method needs no edit here;
- YAML configs may use OmegaConf interpolation (`${data.init_args.image_size}`) and compose with repeated `-c`;
- datamodule metadata the model needs is linked, not repeated: `num_classes`, `input_shape`, `domain_names` (a link
  applies only when the datamodule has the attribute and the model takes the argument);
- the seed defaults to 0, and the resolved config is saved with every run (overwriting on a rerun);
- checkpoints are written atomically and an unreadable one gives a clear error (`plugins.SafeCheckpointIO`);
- inside SLURM, auto-requeue is DDP-safe: the requeue signal is acted on at a step boundary on all ranks together
  (`callbacks.slurm_requeue.SlurmRequeue` replaces Lightning's in-handler checkpoint);
- `--test_after_fit true` tests the fitted model right after `fit`, once per weight variant that callbacks offer
  (e.g. SWAD: last and averaged weights; BestValidationWeights: the best-validation weights) and prints a table.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.plugins.environments import ClusterEnvironment, SLURMEnvironment
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only

from callbacks.slurm_requeue import SlurmRequeue
from plugins import UNREADABLE, SafeCheckpointIO, corrupt_checkpoint_error

# Third-party notices that say nothing about the user's run.
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
warnings.filterwarnings("ignore", message=".*Your `IterableDataset` has `__len__` defined.*")
warnings.filterwarnings(
    "ignore", message=".*LightningCLI's args parameter is intended to run from within Python.*"
)

# Datamodule attribute -> model argument, linked when both sides have them.
LINKED_METADATA = ("num_classes", "input_shape", "domain_names")


class LitCLI(LightningCLI):
    """The framework's LightningCLI: subclass mode, OmegaConf configs, metadata links, end-of-fit tests."""

    def __init__(self, args=None, run: bool = True) -> None:
        self.test_results: dict[str, dict[str, float]] = {}
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf"},
            save_config_callback=SaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=args,
            run=run,
        )

    def before_instantiate_classes(self) -> None:
        if self.subcommand == "fit" and self.config.fit.get("ckpt_path") == "last":
            pin_logger_version_for_resume(self.config.fit)

    def _parse_ckpt_path(self) -> None:
        """LightningCLI reads `--ckpt_path` early for its hyperparameters: say clearly when it is unreadable."""
        try:
            super()._parse_ckpt_path()
        except UNREADABLE as exc:
            raise corrupt_checkpoint_error(self.config[self.config.subcommand].get("ckpt_path"), exc) from exc

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """Build the trainer with the framework's defaults, each only where the config sets nothing of its kind.

        - `SafeCheckpointIO`: atomic saves, clear load errors;
        - inside a SLURM job step: `SLURMEnvironment(auto_requeue=False)` and the `SlurmRequeue` callback, which
          checkpoints and requeues at a step boundary on every rank together (Lightning's own handler saves inside
          the signal handler, which can deadlock DDP ranks; see `callbacks/slurm_requeue.py`).
        """
        trainer = self._get(self.config_init, "trainer", default={})
        plugins = trainer.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(SafeCheckpointIO())
        if SLURMEnvironment.detect() and not any(isinstance(p, ClusterEnvironment) for p in plugins):
            plugins.append(SLURMEnvironment(auto_requeue=False))
            callbacks = trainer.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
            kwargs["callbacks"] = [*callbacks, SlurmRequeue()]
        kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for name in LINKED_METADATA:
            parser.link_arguments(f"data.{name}", f"model.init_args.{name}", apply_on="instantiate")
        parser.add_argument(
            "--test_after_fit",
            type=bool,
            default=False,
            help="After fit, test every weight variant the callbacks offer and print a table (fit only).",
        )

    def after_fit(self) -> None:
        if self.config.get(self.subcommand, {}).get("test_after_fit"):
            self.test_results = test_weight_variants(self.trainer, self.model, self.datamodule)


VERSIONED_LOGGERS = ("CSVLogger", "TensorBoardLogger")


def pin_logger_version_for_resume(config) -> None:
    """`fit --ckpt_path last`: continue the newest run of this experiment instead of opening a new version.

    A rerun of the same command would otherwise log into a new `version_N` folder, where Lightning finds no
    checkpoint and silently starts over. For folder-versioned loggers (CSV, TensorBoard) without an explicit
    `version`, pick the newest existing `version_N` under `save_dir/name`.
    """
    logger = config.get("trainer", {}).get("logger")
    if (
        not logger
        or isinstance(logger, (bool, list))
        or not str(logger.get("class_path", "")).endswith(VERSIONED_LOGGERS)
    ):
        return
    args = logger.get("init_args", {})
    if args.get("version") is not None:
        return
    folder = Path(args.get("save_dir") or ".") / (args.get("name") or "lightning_logs")
    versions = [int(p.name.split("_")[1]) for p in folder.glob("version_*") if p.name.split("_")[1].isdigit()]
    if versions:
        args["version"] = max(versions)


def test_weight_variants(
    trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule | None
) -> dict[str, dict[str, float]]:
    """Test each weight variant ("last" plus what callbacks offer), print and save a table; return the metrics.

    A callback offers variants through `weight_variants(pl_module) -> {name: state_dict}`. The model is left
    holding the weights it had when this was called.
    """
    current = {k: v.detach().clone() for k, v in model.state_dict().items()}
    variants: dict[str, dict[str, torch.Tensor]] = {"last": current}
    for callback in trainer.callbacks:
        offer = getattr(callback, "weight_variants", None)
        if callable(offer):
            variants.update(offer(model))
    results: dict[str, dict[str, float]] = {}
    for name, state in variants.items():
        model.load_state_dict(state)
        metrics = trainer.test(model, datamodule=datamodule, verbose=False)
        results[name] = {k: float(v) for d in metrics for k, v in d.items()}
    model.load_state_dict(current)
    _report(results, trainer.log_dir)
    return results


@rank_zero_only
def _report(results: dict[str, dict[str, float]], log_dir: str | None) -> None:
    """Print the variants table (rows: test metrics, columns: variants) and save it as Markdown, CSV and JSON."""
    names = list(results)
    keys = sorted({k for r in results.values() for k in r}, key=lambda k: (k.count("/"), k))
    keys = [k for k in keys if "/acc" in k] + [k for k in keys if "/acc" not in k]

    def fmt(key: str, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{100 * value:.2f}" if "/acc" in key else f"{value:.4f}"

    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(fmt(key, results[n].get(key)) for n in names) + " |")
    table = "\n".join(lines)
    print("\nTest results per weight variant (accuracy in %):\n" + table + "\n")
    if log_dir:
        out = Path(log_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "test_results.md").write_text(table + "\n")
        (out / "test_results.json").write_text(json.dumps(results, indent=2))
        with open(out / "test_results.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["metric", *names])
            for key in keys:
                writer.writerow([key, *[results[n].get(key, "") for n in names]])
        print(f"Saved to {out / 'test_results.md'} (.csv, .json)")


def main(args: list[str] | None = None) -> LitCLI:
    """Entry point (`python cli.py ...` or the `litlab` console script)."""
    return LitCLI(args=args)


if __name__ == "__main__":
    main()
