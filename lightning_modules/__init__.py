"""LightningModules: one per method; each owns its networks, loss, optimizer and per-step metrics."""

from lightning_modules.classifier import ImageClassifier

__all__ = ["ImageClassifier"]
