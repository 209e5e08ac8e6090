"""Callbacks: techniques that apply to many modules, each with a small written contract in its docstring."""

from callbacks.best_weights import BestValidationWeights
from callbacks.loss_valley import LossValley
from callbacks.swad import SWAD

__all__ = ["SWAD", "BestValidationWeights", "LossValley"]
