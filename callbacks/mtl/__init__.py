"""ANT's pieces: interval clustering of timesteps, stratified sampling, and UW / PCGrad / NashMTL."""

from callbacks.mtl.callback import TimestepMTL
from callbacks.mtl.intervals import cluster_intervals, uniform_boundaries
from callbacks.mtl.methods import UncertaintyWeighting, nash_weights, pcgrad, per_task_grads
from callbacks.mtl.sampling import StratifiedTimestepSampler

__all__ = [
    "StratifiedTimestepSampler",
    "TimestepMTL",
    "UncertaintyWeighting",
    "cluster_intervals",
    "nash_weights",
    "pcgrad",
    "per_task_grads",
    "uniform_boundaries",
]
