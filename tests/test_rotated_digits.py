"""Tests for the rotated-digits data module, the Lightning integration of the stream, and DDP sharding."""

from __future__ import annotations

import time
from pathlib import Path

import lightning
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from sklearn.datasets import load_digits

from datamodules import MultiDomainDataModule, RotatedDigitsDataModule


def originals(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsampled sklearn digits computed independently of the module."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False), torch.tensor(d.target)


@pytest.fixture(scope="module")
def dm() -> RotatedDigitsDataModule:
    module = RotatedDigitsDataModule(test_envs=[0], batch_size=4, steps_per_epoch=3)
    module.setup("fit")
    return module


def test_static_attributes() -> None:
    m = RotatedDigitsDataModule(angles=[0, 30, 60], image_size=12, test_envs=[2])
    assert m.domain_names == ["0deg", "30deg", "60deg"]
    assert m.num_classes == 10
    assert m.input_shape == (1, 12, 12)
    assert (m.train_domains, m.test_domains) == ([0, 1], [2])
    assert isinstance(m, MultiDomainDataModule)
    with pytest.raises(ValueError, match=r"0\.\.5 \(0=0deg"):
        RotatedDigitsDataModule(test_envs=[6])
    with pytest.raises(ValueError, match="distinct"):
        RotatedDigitsDataModule(angles=[0, 0, 15])


def test_domains_partition_the_digits(dm: RotatedDigitsDataModule) -> None:
    assert dm.domain_names == ["0deg", "15deg", "30deg", "45deg", "60deg", "75deg"]
    assert dm.domain_sizes == [300, 300, 300, 299, 299, 299]
    assert sum(dm.domain_sizes) == 1797
    src = torch.cat(dm.domain_source_indices)
    assert sorted(src.tolist()) == list(range(1797))
    for d, n in enumerate(dm.domain_sizes):
        assert len(dm.splits[d]["out"]) == int(n * 0.2)
        assert sorted(dm.splits[d]["out"] + dm.splits[d]["in"]) == list(range(n))


def test_zero_degree_domain_is_the_upsampled_originals(dm: RotatedDigitsDataModule) -> None:
    x, y = originals()
    flat = x.flatten(1)
    imgs = dm.domain_images[0]
    for img, label in zip(imgs[:50], dm.domain_labels[0][:50], strict=True):
        match = (flat == img.flatten()).all(dim=1).nonzero().flatten()
        assert len(match) >= 1, "0deg image is not an upsampled original digit"
        assert label in y[match]
    for d in range(1, 6):  # the rotated domains are not copies of the originals
        idx = dm.domain_source_indices[d]
        assert not torch.allclose(dm.domain_images[d], x[idx], atol=1e-3)
        assert torch.equal(dm.domain_labels[d], y[idx])
    for d in range(6):
        assert dm.domain_images[d].min() >= 0 and dm.domain_images[d].max() <= 1


def test_ninety_degrees_is_counter_clockwise_rot90() -> None:
    m = RotatedDigitsDataModule(angles=[0, 90], test_envs=[0])
    m.setup()
    x, _ = originals()
    idx = m.domain_source_indices[1]
    expected = torch.rot90(x[idx], k=1, dims=(-2, -1))
    assert torch.allclose(m.domain_images[1], expected, atol=1e-4)


def test_deterministic_and_data_seed_dependent(dm: RotatedDigitsDataModule) -> None:
    same = RotatedDigitsDataModule(test_envs=[0])
    same.setup()
    other = RotatedDigitsDataModule(test_envs=[0], data_seed=1)
    other.setup()
    for d in range(6):
        assert torch.equal(same.domain_images[d], dm.domain_images[d])
    assert same.splits == dm.splits
    assert not torch.equal(other.domain_source_indices[0], dm.domain_source_indices[0])


def test_train_batch(dm: RotatedDigitsDataModule) -> None:
    loader = dm.train_dataloader()
    assert len(loader) == 3
    batches = list(loader)
    assert len(batches) == 3
    for x, y, d in batches:
        assert x.shape == (20, 1, 16, 16)
        assert x.dtype == torch.float32
        assert d.tolist() == [i for i in (1, 2, 3, 4, 5) for _ in range(4)]
        assert y.dtype == torch.int64 and y.min() >= 0 and y.max() <= 9
    val = list(dm.val_dataloader())
    assert sum(len(b[1]) for b in val) == sum(len(dm.splits[d]["out"]) for d in dm.train_domains)
    assert 0 not in torch.cat([b[2] for b in val]).tolist()


class _CountingModule(lightning.LightningModule):
    """Linear classifier that records the domain pattern of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(256, 10)
        self.train_batches: list[list[int]] = []
        self.val_items = 0
        self.val_runs_at_step: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y, d = batch
        self.train_batches.append(d.tolist())
        return F.cross_entropy(self.net(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        self.val_items += len(batch[1])

    def on_validation_epoch_end(self) -> None:
        self.val_runs_at_step.append(self.global_step)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_fit_uses_steps_per_epoch(dm: RotatedDigitsDataModule) -> None:
    model = _CountingModule()
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    assert trainer.num_training_batches == 3
    assert len(model.train_batches) == 6
    assert model.val_runs_at_step == [3, 6]  # validation every steps_per_epoch steps
    assert model.val_items == 2 * sum(len(dm.splits[d]["out"]) for d in dm.train_domains)


# ------------------------------------------------------------------ DDP (2 gloo processes, CPU)
def _ddp_worker(rank: int, world_size: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        lightning.seed_everything(7, verbose=False)  # same seed on every rank, as Lightning does
        m = RotatedDigitsDataModule(test_envs=[0], batch_size=3, steps_per_epoch=4, eval_batch_size=16)
        m.setup("fit")
        train = torch.cat([x for x, _, _ in m.train_dataloader()])
        val_loader = m.val_dataloader()
        val = torch.cat([x for x, _, _ in val_loader])
        torch.save(
            {"train": train, "val": val, "sampler": type(val_loader.sampler).__name__},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_draw_different_samples_and_eval_covers_each_sample_once(tmp_path: Path) -> None:
    # spawn, not fork: a forked child can deadlock on the parent's OpenMP state once torch has run
    ctx = mp.start_processes(
        _ddp_worker,
        args=(2, str(tmp_path / "store"), str(tmp_path)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("DDP worker processes did not finish within 120 s")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["sampler"] == r1["sampler"] == "UnrepeatedDistributedSampler"
    assert r0["train"].shape == r1["train"].shape == (4 * 3 * 5, 1, 16, 16)
    assert not torch.equal(r0["train"], r1["train"])

    ref = RotatedDigitsDataModule(test_envs=[0])
    ref.setup()
    everything = torch.cat([x for x, _, _ in ref.val_dataloader()])
    assert len(r0["val"]) + len(r1["val"]) == len(everything)
    merged = torch.empty_like(everything)
    merged[0::2], merged[1::2] = r0["val"], r1["val"]  # UnrepeatedDistributedSampler strides by rank
    assert torch.equal(merged, everything)
