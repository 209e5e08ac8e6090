"""Loader helpers shared by the datamodules."""

from __future__ import annotations

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset


def eval_dataloader(
    dataset: Dataset, batch_size: int, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """An unshuffled evaluation loader that, under DDP, gives every sample to exactly one rank.

    Lightning's own distributed sampler pads the dataset to a multiple of the world size, so a few samples
    would count twice in validation/test metrics; with an `UnrepeatedDistributedSampler` (which Lightning keeps,
    being a DistributedSampler) ranks get uneven shares and metrics gathered as sums or concatenations equal
    the single-process ones.
    """
    sampler = None
    if (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )
