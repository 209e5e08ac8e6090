"""Multi-domain data layer following the DomainBed protocol (as used by SWAD).

Every domain ("environment") is split once, deterministically from ``(trial_seed, domain index)``, into
an "out" hold-out (the first ``holdout_fraction`` of a seeded shuffle) and an "in" remainder, exactly as
DomainBed's ``train.py`` does. Source domains train on "in" and validate on "out"; target domains
(``test_envs``) are only ever tested, on "in" (DomainBed's ``test_in``). The target domain never feeds
the validation signal, which SWAD uses to find its loss valley.

Training draws ``batch_size`` samples *per source domain* per step, with replacement, and concatenates the
blocks in domain order. One Lightning "epoch" is ``steps_per_epoch`` such steps, so validation (and hence
SWAD's checkpointing) runs every ``steps_per_epoch`` steps.

Every item, in every loader, is ``(image, label, domain)`` where ``domain`` is the global index into
``domain_names``, so a module can compute per-domain metrics.
"""

from __future__ import annotations

import abc
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from lightning import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader, Dataset, IterableDataset, get_worker_info

from datamodules.loaders import eval_dataloader

Item = tuple[torch.Tensor, int, int]


def seed_hash(*args: object) -> int:
    """DomainBed's ``seed_hash``: md5 of ``str(args)`` mod 2**31.

    Unlike Python's ``hash()`` it does not depend on ``PYTHONHASHSEED``, so splits are identical across
    processes, ranks and machines, and identical to DomainBed's for the same ``(trial_seed, env_i)``.
    """
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2**31)


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into ``(out, in_)`` exactly like DomainBed's ``split_dataset``.

    Shuffles with ``np.random.RandomState(seed)`` and takes the first ``int(n * holdout_fraction)``
    indices as the hold-out ("out"), the rest as "in".
    """
    keys = list(range(n))
    np.random.RandomState(seed).shuffle(keys)
    n_out = int(n * holdout_fraction)
    return keys[:n_out], keys[n_out:]


def dist_rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` if initialized, else ``(0, 1)``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass(frozen=True)
class DomainSpec:
    """Static description of a multi-domain dataset, known without touching the disk.

    Subclasses build one in ``__init__`` so that ``num_classes``, ``domain_names`` and ``input_shape`` are
    valid before ``setup()`` (LightningCLI links them into the model at instantiation time).
    """

    name: str
    domain_names: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, int, int]


class DomainTagged(Dataset):
    """Wraps a per-domain dataset of ``(x, y)`` so that items become ``(x, int(y), domain)``."""

    def __init__(self, dataset: Dataset, domain: int) -> None:
        self.dataset = dataset
        self.domain = domain

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Item:
        x, y = self.dataset[index]
        return x, int(y), self.domain


class DomainBalancedStream(IterableDataset):
    """Training stream: per step, ``batch_size`` draws per domain (with replacement), in domain order.

    Wrap it in ``DataLoader(batch_size=batch_size * len(datasets))``: every collated batch is then one
    block of ``batch_size`` items per domain, in the order of ``datasets``. An epoch is ``steps_per_epoch``
    batches per rank.

    The draws of batch ``b`` of epoch ``e`` on rank ``r`` come from ``default_rng([seed, r, e, b])`` and
    nothing else, so any batch can be produced again: a run resumed from a checkpoint (even one written in
    the middle of an epoch) sees exactly the batches an uninterrupted run sees. ``epoch`` and ``start``
    (the first batch to yield) are set by :class:`PositionedLoader` before each pass. With ``W`` workers,
    worker ``w`` yields batches ``start + w``, ``start + w + W``, ...; the DataLoader reads workers in turn,
    so batches arrive in order.

    It is an ``IterableDataset`` so that Lightning does not inject a ``DistributedSampler``; ranks are
    decorrelated by the rank in the seed.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        batch_size: int,
        steps_per_epoch: int,
        seed: int = 0,
        rank: int | None = None,
    ) -> None:
        if not datasets:
            raise ValueError("DomainBalancedStream needs at least one domain dataset")
        for i, ds in enumerate(datasets):
            if len(ds) == 0:  # type: ignore[arg-type]
                raise ValueError(f"DomainBalancedStream: domain dataset #{i} is empty")
        self.datasets = list(datasets)
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = int(seed)
        self.rank = dist_rank_and_world_size()[0] if rank is None else rank
        self.epoch = 0
        self.start = 0

    @property
    def step_size(self) -> int:
        """Items per training step (= the DataLoader batch size)."""
        return self.batch_size * len(self.datasets)

    def __len__(self) -> int:
        """Items per epoch on this rank (so ``len(loader) == steps_per_epoch``)."""
        return self.steps_per_epoch * self.step_size

    def batch_indices(self, epoch: int, batch: int) -> list[np.ndarray]:
        """The per-domain sample indices of batch ``batch`` of ``epoch`` on this rank."""
        rng = np.random.default_rng([self.seed, self.rank, epoch, batch])
        return [rng.integers(0, len(ds), size=self.batch_size) for ds in self.datasets]  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Item]:
        info = get_worker_info()
        worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        for batch in range(self.start + worker_id, self.steps_per_epoch, num_workers):
            for ds, indices in zip(self.datasets, self.batch_indices(self.epoch, batch), strict=True):
                for index in indices:
                    yield ds[int(index)]


class PositionedLoader(DataLoader):
    """A DataLoader over a :class:`DomainBalancedStream` that tells the stream where training stands.

    Before each pass it asks ``position()`` for ``(epoch, first batch)``: from the trainer when there is
    one (after a resume, the batch the interrupted epoch stopped at), else a pass counter. Workers are
    not persistent, so each pass's workers receive the current position.
    """

    def __init__(
        self, stream: DomainBalancedStream, position: Callable[[], tuple[int, int]], **kwargs
    ) -> None:
        super().__init__(stream, batch_size=stream.step_size, persistent_workers=False, **kwargs)
        self.position = position

    def __iter__(self):
        self.dataset.epoch, self.dataset.start = self.position()
        return super().__iter__()


class MultiDomainDataModule(LightningDataModule, abc.ABC):
    """Abstract DomainBed-protocol data module; subclasses supply the per-domain data.

    Subclasses pass a :class:`DomainSpec` and implement :meth:`_load_domains` (load/validate, return the
    size of every domain) and :meth:`_domain_dataset` (a dataset of ``(x, y)`` for some indices of one
    domain, with the train or eval transform).

    Args:
        test_envs: indices (into ``domain_names``) of the held-out target domains.
        holdout_fraction: fraction of every domain put in the "out" split (source validation).
        trial_seed: seeds the split (DomainBed's ``trial_seed``); 0, 1, 2 for the usual 3 trials.
        batch_size: training samples PER SOURCE DOMAIN per step.
        eval_batch_size: batch size of the validation and test loaders.
        steps_per_epoch: training steps per Lightning epoch (SWAD's checkpoint frequency).
        num_workers: DataLoader workers (evaluation workers are persistent; training workers are
            restarted each epoch so they receive the epoch's position).
        seed: seed of the training draws; default: the seed given to ``lightning.seed_everything``
            (``PL_GLOBAL_SEED``), else 0.
        pin_memory: DataLoader ``pin_memory``.
    """

    def __init__(
        self,
        spec: DomainSpec,
        *,
        test_envs: Sequence[int] = (0,),
        holdout_fraction: float = 0.2,
        trial_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        steps_per_epoch: int = 100,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.seed = seed
        self._passes = 0
        self.test_envs = self._validate_test_envs(spec, test_envs)
        if not 0.0 < holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
        for name, value, minimum in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("steps_per_epoch", steps_per_epoch, 1),
            ("num_workers", num_workers, 0),
        ):
            if int(value) != value or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
        self.holdout_fraction = float(holdout_fraction)
        self.trial_seed = int(trial_seed)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.steps_per_epoch = int(steps_per_epoch)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)

        self.domain_sizes: list[int] | None = None
        self.splits: list[dict[str, list[int]]] | None = None
        self.train_datasets: list[Dataset] = []
        self.val_datasets: list[Dataset] = []
        self.test_datasets: list[Dataset] = []

    # ----------------------------------------------------------------- static properties
    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def domain_names(self) -> list[str]:
        """All domain names, in DomainBed order (sorted); indices into this list are domain ids."""
        return list(self.spec.domain_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image tensor."""
        return self.spec.input_shape

    @property
    def num_domains(self) -> int:
        return len(self.spec.domain_names)

    @property
    def train_domains(self) -> list[int]:
        """Source domain indices, ascending (the order of the blocks in a training batch)."""
        return [d for d in range(self.num_domains) if d not in self.test_envs]

    @property
    def test_domains(self) -> list[int]:
        """Target domain indices, ascending."""
        return list(self.test_envs)

    @staticmethod
    def _validate_test_envs(spec: DomainSpec, test_envs: Sequence[int]) -> list[int]:
        n = len(spec.domain_names)
        valid = ", ".join(f"{i}={name}" for i, name in enumerate(spec.domain_names))
        where = f"{spec.name} has {n} domains, valid test_envs are 0..{n - 1} ({valid})"
        if isinstance(test_envs, int | str) or not isinstance(test_envs, Sequence):
            raise ValueError(f"test_envs must be a list of domain indices, got {test_envs!r}; {where}")
        envs = list(test_envs)
        bad = [e for e in envs if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < n]
        if bad:
            raise ValueError(f"test_envs {envs} contains invalid domain indices {bad}; {where}")
        if len(set(envs)) != len(envs):
            raise ValueError(f"test_envs {envs} contains duplicates; {where}")
        if len(envs) >= n:
            raise ValueError(f"test_envs {envs} holds out every domain, leaving no source domain; {where}")
        return sorted(envs)

    # ----------------------------------------------------------------- subclass hooks
    @abc.abstractmethod
    def _load_domains(self) -> list[int]:
        """Load and validate the data; return the number of samples of every domain, in domain order."""

    @abc.abstractmethod
    def _domain_dataset(self, domain: int, indices: list[int], train: bool) -> Dataset:
        """A dataset of ``(x, y)`` over ``indices`` of ``domain``; train transform iff ``train``."""

    # ----------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Load the domains and build the splits and datasets (once; later calls are no-ops)."""
        if self.splits is not None:
            return
        sizes = list(self._load_domains())
        if len(sizes) != self.num_domains:
            raise RuntimeError(f"{type(self).__name__}._load_domains returned {len(sizes)} sizes")
        splits = []
        for d, n in enumerate(sizes):
            out, in_ = split_indices(n, self.holdout_fraction, seed_hash(self.trial_seed, d))
            splits.append({"in": in_, "out": out})
        used = [(d, s) for d in self.train_domains for s in ("in", "out")]
        used += [(d, "in") for d in self.test_domains]
        for d, s in used:
            if not splits[d][s]:
                raise ValueError(
                    f"{self.spec.name}: domain {d} ({self.spec.domain_names[d]}) has an empty '{s}' split "
                    f"({sizes[d]} samples, holdout_fraction={self.holdout_fraction}: "
                    f"out = int({sizes[d]} * {self.holdout_fraction}) = {len(splits[d]['out'])}). "
                    "Add data to that domain, change holdout_fraction, or hold the domain out via test_envs."
                )

        def tagged(d: int, split: str, train: bool) -> Dataset:
            return DomainTagged(self._domain_dataset(d, splits[d][split], train=train), d)

        self.train_datasets = [tagged(d, "in", True) for d in self.train_domains]
        self.val_datasets = [tagged(d, "out", False) for d in self.train_domains]
        self.test_datasets = [tagged(d, "in", False) for d in self.test_domains]
        self.domain_sizes = sizes
        self.splits = splits

    def _require_setup(self) -> None:
        if self.splits is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before requesting a dataloader")

    # ----------------------------------------------------------------- loaders
    def train_dataloader(self) -> DataLoader:
        """Domain-balanced stream: ``steps_per_epoch`` batches of ``batch_size`` per source domain."""
        self._require_setup()
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        stream = DomainBalancedStream(
            self.train_datasets,
            self.batch_size,
            self.steps_per_epoch,
            seed=seed,
            rank=dist_rank_and_world_size()[0],
        )
        return PositionedLoader(
            stream, self._train_position, num_workers=self.num_workers, pin_memory=self.pin_memory
        )

    def _train_position(self) -> tuple[int, int]:
        """(epoch, first batch) of the coming training pass: the trainer's, or a pass counter without one."""
        trainer = self.trainer
        if trainer is not None and trainer.training:
            # after a resume, `processed` is the batch the interrupted epoch goes on with (0 for a new epoch)
            return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed
        self._passes += 1
        return self._passes - 1, 0

    def _eval_loader(self, datasets: list[Dataset]) -> DataLoader:
        # every sample exactly once across ranks
        return eval_dataloader(
            ConcatDataset(datasets), self.eval_batch_size, self.num_workers, self.pin_memory
        )

    def val_dataloader(self) -> DataLoader:
        """Source domains' "out" splits, eval transform (never augmented), in domain order."""
        self._require_setup()
        return self._eval_loader(self.val_datasets)

    def test_dataloader(self) -> DataLoader:
        """Target domains' "in" splits (DomainBed's ``test_in``), eval transform, in domain order."""
        self._require_setup()
        return self._eval_loader(self.test_datasets)

    # ----------------------------------------------------------------- logging
    def describe(self) -> str:
        """Human-readable summary: domains, roles and per-domain split sizes (sizes after setup)."""
        lines = [
            f"{self.spec.name}: {self.num_domains} domains, {self.num_classes} classes, "
            f"input {self.input_shape}, test_envs={self.test_envs}, holdout={self.holdout_fraction}, "
            f"trial_seed={self.trial_seed}"
        ]
        for d, name in enumerate(self.spec.domain_names):
            role = "target" if d in self.test_envs else "source"
            if self.splits is None or self.domain_sizes is None:
                sizes = "(sizes known after setup)"
            else:
                s = self.splits[d]
                sizes = f"{self.domain_sizes[d]} samples: in {len(s['in'])} / out {len(s['out'])}"
            lines.append(f"  [{d}] {name} ({role}): {sizes}")
        return "\n".join(lines)
