"""CATs: cost-aggregation transformers for semantic correspondence (Cho et al., NeurIPS 2021)."""

from lightning_modules.cats.metrics import PCK
from lightning_modules.cats.module import CATsModule

__all__ = ["PCK", "CATsModule"]
