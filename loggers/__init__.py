"""Experiment loggers with the framework's defaults."""

from loggers.wandb import WandbLogger, wandb_has_credentials

__all__ = ["WandbLogger", "wandb_has_credentials"]
