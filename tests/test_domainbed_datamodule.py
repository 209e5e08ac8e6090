"""Tests for the DomainBed data module on tiny on-disk trees in the real ``<root>/PACS/<domain>/<class>`` layout.

The default tree is the design's fixture: 4 PACS domains x 2 classes (dog, horse) x 5 random 32x32 PNGs.
Real PACS has 7 classes, so tests that need a valid tree patch the static table to 2 classes
(``two_class_pacs``); the unpatched table is used to check the class-count error on the same tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import CorruptImageError, DataLayoutError, DomainBedDataModule
from datamodules import domainbed as domainbed_module
from datamodules.domainbed import DATASETS, eval_transform

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
CLASSES = ("dog", "horse")


def make_tree(
    root: Path,
    folder: str = "PACS",
    domains: tuple[str, ...] = PACS_DOMAINS,
    classes: tuple[str, ...] = CLASSES,
    per_class: int = 5,
    seed: int = 0,
) -> Path:
    """Write random 32x32 RGB PNGs at ``root/folder/<domain>/<class>/<i>.png``; returns ``root``."""
    rng = np.random.default_rng(seed)
    for domain in domains:
        for cls in classes:
            d = root / folder / domain / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(d / f"{i}.png")
    return root


@pytest.fixture
def two_class_pacs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the static PACS row say 2 classes, matching the fixture trees."""
    monkeypatch.setitem(DATASETS, "PACS", dataclasses.replace(DATASETS["PACS"], num_classes=2))


@pytest.fixture
def pacs_root(tmp_path: Path, two_class_pacs: None) -> Path:
    return make_tree(tmp_path)


def make_dm(root: Path, **kwargs) -> DomainBedDataModule:
    kwargs.setdefault("image_size", 32)
    return DomainBedDataModule(root=str(root), dataset="PACS", **kwargs)


def files_of(dm: DomainBedDataModule, domain: int, split: str) -> list[str]:
    samples = dm._samples[domain]
    return [samples[i][0] for i in dm.splits[domain][split]]


def eval_tensors(paths: list[str], size: int = 32) -> list[torch.Tensor]:
    tf = eval_transform(size)
    return [tf(Image.open(p).convert("RGB")) for p in paths]


def contains(tensors: list[torch.Tensor], x: torch.Tensor) -> bool:
    return any(torch.equal(t, x) for t in tensors)


# ------------------------------------------------------------------ static attributes and arguments
def test_static_attributes_before_setup(tmp_path: Path) -> None:
    dm = DomainBedDataModule(root=str(tmp_path / "nowhere"), dataset="PACS", test_envs=[2], image_size=64)
    assert dm.domain_names == list(PACS_DOMAINS)
    assert dm.num_classes == 7
    assert dm.input_shape == (3, 64, 64)
    assert dm.train_domains == [0, 1, 3]
    assert dm.test_domains == [2]
    assert "sizes known after setup" in dm.describe()


@pytest.mark.parametrize(
    ("key", "n_domains", "n_classes"),
    [("VLCS", 4, 5), ("OfficeHome", 4, 65), ("TerraIncognita", 4, 10), ("DomainNet", 6, 345)],
)
def test_static_table(key: str, n_domains: int, n_classes: int) -> None:
    dm = DomainBedDataModule(root="/nonexistent", dataset=key)
    assert dm.num_classes == n_classes
    assert len(dm.domain_names) == n_domains
    assert dm.domain_names == sorted(dm.domain_names)  # DomainBed sorts the domain folders


def test_unknown_dataset_key() -> None:
    with pytest.raises(ValueError, match=r"unknown DomainBed dataset 'PCAS'.*PACS, VLCS, OfficeHome"):
        DomainBedDataModule(root="/nonexistent", dataset="PCAS")


@pytest.mark.parametrize("test_envs", [[4], [-1], [0, 0], [0, 1, 2, 3]])
def test_invalid_test_envs(test_envs: list[int]) -> None:
    with pytest.raises(ValueError, match=r"valid test_envs are 0\.\.3 \(0=art_painting.*3=sketch\)"):
        DomainBedDataModule(root="/nonexistent", test_envs=test_envs)


# ------------------------------------------------------------------ splits
def test_split_sizes_disjoint_and_covering(pacs_root: Path) -> None:
    dm = make_dm(pacs_root)
    dm.setup("fit")
    for d in range(4):
        out, in_ = dm.splits[d]["out"], dm.splits[d]["in"]
        assert (len(out), len(in_)) == (2, 8)
        assert sorted(out + in_) == list(range(10))
    assert "10 samples: in 8 / out 2" in dm.describe()


def test_splits_follow_domainbed_seed_hash(pacs_root: Path) -> None:
    """Independent re-implementation of DomainBed's seed_hash + split_dataset."""
    dm = make_dm(pacs_root, trial_seed=1)
    dm.setup()
    for d in range(4):
        seed = int(hashlib.md5(str((1, d)).encode("utf-8")).hexdigest(), 16) % (2**31)
        keys = list(range(10))
        np.random.RandomState(seed).shuffle(keys)
        assert dm.splits[d]["out"] == keys[:2]
        assert dm.splits[d]["in"] == keys[2:]


def test_splits_reproducible_and_trial_seed_dependent(pacs_root: Path) -> None:
    a, b, c = make_dm(pacs_root), make_dm(pacs_root), make_dm(pacs_root, trial_seed=1)
    for dm in (a, b, c):
        dm.setup("fit")
    assert a.splits == b.splits
    assert a.splits != c.splits
    assert files_of(a, 0, "out") == files_of(b, 0, "out")


def test_setup_is_idempotent(pacs_root: Path) -> None:
    dm = make_dm(pacs_root)
    dm.setup("fit")
    first = dm.train_datasets
    dm.setup("test")
    assert dm.train_datasets is first


# ------------------------------------------------------------------ training stream
def test_train_batches_are_domain_blocks_of_in_splits(pacs_root: Path) -> None:
    dm = make_dm(pacs_root, test_envs=[1], batch_size=3, steps_per_epoch=4, augment=False)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 4
    assert len(loader.dataset) == 4 * 3 * 3
    in_tensors = {d: eval_tensors(files_of(dm, d, "in")) for d in dm.train_domains}
    batches = list(loader)
    assert len(batches) == 4
    for x, y, dom in batches:
        assert x.shape == (9, 3, 32, 32)
        assert dom.tolist() == [0] * 3 + [2] * 3 + [3] * 3
        assert set(y.tolist()) <= {0, 1}
        for xi, di in zip(x, dom.tolist(), strict=True):
            assert contains(in_tensors[di], xi), "training item is not from its domain's 'in' split"


def test_train_seeding_reproducible_and_epochs_differ(pacs_root: Path) -> None:
    def first_two_epochs(**kwargs) -> list[torch.Tensor]:
        lightning.seed_everything(123)
        dm = make_dm(pacs_root, batch_size=4, steps_per_epoch=2, **kwargs)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return [torch.cat([x for x, _, _ in loader]) for _ in range(2)]

    a, b = first_two_epochs(), first_two_epochs()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # augmentation included
    plain = first_two_epochs(augment=False)  # sampler only
    assert not torch.equal(plain[0], plain[1])


def test_train_with_two_workers(pacs_root: Path) -> None:
    dm = make_dm(pacs_root, test_envs=[3], batch_size=2, steps_per_epoch=5, num_workers=2, augment=False)
    dm.setup("fit")
    lightning.seed_everything(0)
    loader = dm.train_dataloader()
    assert not loader.persistent_workers  # each pass's workers must receive the pass's position
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 5
        for x, _, dom in batches:
            assert x.shape == (6, 3, 32, 32)
            assert dom.tolist() == [0, 0, 1, 1, 2, 2]
        epochs.append(torch.cat([x for x, _, _ in batches]))
    assert not torch.equal(epochs[0], epochs[1])
    # the same batches, in the same order, as without workers
    single = make_dm(pacs_root, test_envs=[3], batch_size=2, steps_per_epoch=5, num_workers=0, augment=False)
    single.setup("fit")
    lightning.seed_everything(0)
    plain = single.train_dataloader()
    assert torch.equal(torch.cat([x for x, _, _ in plain]), epochs[0])


def test_any_batch_can_be_drawn_again(pacs_root: Path) -> None:
    dm = make_dm(pacs_root, batch_size=2, steps_per_epoch=6, augment=False, seed=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    full = [x for x, _, _ in loader]  # epoch 0
    loader.position = lambda: (0, 4)  # a run resumed at batch 4 of epoch 0
    tail = [x for x, _, _ in loader]
    assert len(tail) == 2
    assert all(torch.equal(a, b) for a, b in zip(tail, full[4:], strict=True))


def test_training_stream_is_augmented_by_default(pacs_root: Path) -> None:
    dm = make_dm(pacs_root, batch_size=8, steps_per_epoch=1)
    dm.setup("fit")
    lightning.seed_everything(0)
    x, _, dom = next(iter(dm.train_dataloader()))
    clean = eval_tensors(files_of(dm, 1, "in"))
    assert not all(contains(clean, xi) for xi, d in zip(x, dom.tolist(), strict=True) if d == 1)


# ------------------------------------------------------------------ eval loaders
def test_val_loader_is_source_out_splits_unaugmented(pacs_root: Path) -> None:
    dm = make_dm(pacs_root, test_envs=[0], eval_batch_size=4)  # augment=True: val must still be clean
    dm.setup("fit")
    runs = [list(dm.val_dataloader()) for _ in range(2)]
    x1 = torch.cat([b[0] for b in runs[0]])
    x2 = torch.cat([b[0] for b in runs[1]])
    dom = torch.cat([b[2] for b in runs[0]]).tolist()
    assert torch.equal(x1, x2)
    assert dom == [1] * 2 + [2] * 2 + [3] * 2
    expected = [t for d in (1, 2, 3) for t in eval_tensors(files_of(dm, d, "out"))]
    assert len(expected) == len(x1)
    for xi, ei in zip(x1, expected, strict=True):
        assert torch.equal(xi, ei)


def test_test_loader_is_target_in_splits(pacs_root: Path) -> None:
    dm = make_dm(pacs_root, test_envs=[3, 0], eval_batch_size=5)
    dm.setup("test")
    assert dm.test_domains == [0, 3]
    batches = list(dm.test_dataloader())
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    dom = torch.cat([b[2] for b in batches]).tolist()
    assert dom == [0] * 8 + [3] * 8
    paths = files_of(dm, 0, "in") + files_of(dm, 3, "in")
    for xi, ei in zip(x, eval_tensors(paths), strict=True):
        assert torch.equal(xi, ei)
    assert y.tolist() == [CLASSES.index(Path(p).parent.name) for p in paths]


# ------------------------------------------------------------------ bad inputs
def test_missing_root(tmp_path: Path) -> None:
    dm = make_dm(tmp_path / "missing")
    with pytest.raises(DataLayoutError, match=r"data root .*missing does not exist[\s\S]*download\.py"):
        dm.setup()


def test_missing_dataset_folder(tmp_path: Path) -> None:
    make_tree(tmp_path, folder="pacs_typo")
    with pytest.raises(DataLayoutError, match=r"dataset folder .*PACS not found .*pacs_typo[\s\S]*sketch/"):
        make_dm(tmp_path).setup()


def test_missing_domain(tmp_path: Path) -> None:
    make_tree(tmp_path, domains=PACS_DOMAINS[:3])
    with pytest.raises(DataLayoutError, match=r"\['sketch'\] missing .*found: \['art_painting'"):
        make_dm(tmp_path).setup()


def test_domain_missing_a_class(tmp_path: Path, two_class_pacs: None) -> None:
    make_tree(tmp_path, domains=("art_painting", "photo", "sketch"))
    make_tree(tmp_path, domains=("cartoon",), classes=("dog",))
    with pytest.raises(DataLayoutError, match=r"domain 'cartoon' is missing classes \['horse'\]"):
        make_dm(tmp_path).setup()


def test_wrong_number_of_classes(tmp_path: Path) -> None:
    make_tree(tmp_path)  # 2 classes, real PACS table says 7
    with pytest.raises(DataLayoutError, match=r"found 2 class folders .*expected 7"):
        make_dm(tmp_path).setup()


def test_class_without_images(tmp_path: Path, two_class_pacs: None) -> None:
    make_tree(tmp_path)
    for f in (tmp_path / "PACS" / "photo" / "horse").iterdir():
        f.unlink()
    (tmp_path / "PACS" / "photo" / "horse" / "notes.txt").write_text("not an image")
    with pytest.raises(DataLayoutError, match=r"domain 'photo' has no images .*\['horse'\]"):
        make_dm(tmp_path).setup()


def test_corrupt_image(pacs_root: Path) -> None:
    dm = make_dm(pacs_root, test_envs=[2], eval_batch_size=64)
    dm.setup()
    bad = Path(files_of(dm, 2, "in")[3])  # a file the test loader reads
    bad.write_bytes(b"this is not a png at all")
    dm = make_dm(pacs_root, test_envs=[2], eval_batch_size=64)
    dm.setup()  # without verify_images the layout is fine ...
    with pytest.raises(CorruptImageError, match=str(bad)):  # ... and loading names the file
        list(dm.test_dataloader())

    with pytest.raises(CorruptImageError, match=rf"{bad}.*verify_images"):
        make_dm(pacs_root, verify_images=True).setup()


def test_empty_split(tmp_path: Path, two_class_pacs: None) -> None:
    make_tree(tmp_path, domains=("art_painting", "cartoon", "sketch"))
    make_tree(tmp_path, domains=("photo",), per_class=1)  # 2 images: int(2 * 0.2) = 0 held out
    with pytest.raises(ValueError, match=r"domain 2 \(photo\) has an empty 'out' split"):
        make_dm(tmp_path, test_envs=[0]).setup()
    dm = make_dm(tmp_path, test_envs=[2])  # as a target only its 'in' split is used
    dm.setup()
    assert len(dm.test_datasets[0]) == 2


def test_unexpected_domain_folder_is_ignored_with_warning(pacs_root: Path) -> None:
    (pacs_root / "PACS" / "kfold_extra").mkdir()
    dm = make_dm(pacs_root)
    with pytest.warns(RuntimeWarning, match="kfold_extra"):
        dm.setup()
    assert dm.domain_sizes == [10, 10, 10, 10]


def test_domainbed_module_never_downloads() -> None:
    source = Path(domainbed_module.__file__).read_text()
    assert "download=True" not in source and "urlopen" not in source and "requests" not in source
