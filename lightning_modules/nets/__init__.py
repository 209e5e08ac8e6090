"""Networks shared by several methods (not LightningModules)."""

from lightning_modules.nets.backbones import SmallCNN, build_backbone

__all__ = ["SmallCNN", "build_backbone"]
