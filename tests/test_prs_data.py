"""PRS datamodules on tiny on-disk fixtures in the official layouts: CIFAR-100 pickles, ImageNet folders + CSV."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.prs import (
    CIFAR100DataModule,
    DigitsClassificationDataModule,
    ImageFiles,
    ImageNetSubsetDataModule,
    balanced_subset,
)


def write_cifar100(root, n=20):
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        entry = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"fine_labels": [i % 100 for i in range(n)],
            b"coarse_labels": [i % 20 for i in range(n)],
        }
        (base / split).write_bytes(pickle.dumps(entry))
    (base / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"c%d" % i for i in range(100)]}))


def test_cifar100_reads_the_pickle_release(tmp_path):
    write_cifar100(tmp_path)
    dm = CIFAR100DataModule(root=str(tmp_path), batch_size=8, eval_batch_size=16, num_workers=0)
    assert dm.num_classes == 100 and dm.input_shape == (3, 32, 32)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.max() < 100
    xv, yv = next(iter(dm.val_dataloader()))
    assert xv.shape == (16, 3, 32, 32) and yv.tolist() == list(range(16))


def test_cifar100_missing_gives_one_clear_error(tmp_path):
    dm = CIFAR100DataModule(root=str(tmp_path), num_workers=0)
    with pytest.raises(DataLayoutError, match="cifar-100-python.*cs.toronto.edu") as err:
        dm.setup("fit")
    assert "download" not in str(err.value)


def write_imagenet(root, flat_val=True):
    wnids = ["n01440764", "n01443537", "n01484850"]
    for c, wnid in enumerate(wnids):
        folder = root / "train" / wnid
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (12, 10), (40 * c, 10 * i, 0)).save(folder / f"{wnid}_{i}.JPEG", format="PNG")
    val = root / "val"
    val.mkdir()
    rows = ["ImageId,PredictionString"]
    for c, wnid in enumerate(wnids):
        name = f"ILSVRC2012_val_{c + 1:08d}"
        if flat_val:
            Image.new("RGB", (12, 10), (40 * c, 0, 0)).save(val / f"{name}.JPEG", format="PNG")
            rows.append(f"{name},{wnid} 1 2 10 9")
        else:
            (val / wnid).mkdir()
            Image.new("RGB", (12, 10), (40 * c, 0, 0)).save(val / wnid / f"{name}.JPEG", format="PNG")
    if flat_val:
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return wnids


@pytest.mark.parametrize("flat_val", [True, False])
def test_imagenet_subset_is_balanced_seeded_and_labels_val(tmp_path, flat_val):
    write_imagenet(tmp_path, flat_val)
    make = lambda seed, **kw: ImageNetSubsetDataModule(  # noqa: E731
        root=str(tmp_path), fraction=0.5, subset_seed=seed, image_size=8, batch_size=2, num_workers=0, **kw
    )
    dm = make(0)
    assert dm.num_classes == 3 and dm.input_shape == (3, 8, 8)
    files = dm.train_files()
    assert sorted(label for _, label in files) == [0, 0, 1, 1, 2, 2]  # 2 of 4 per class
    assert files == make(0).train_files()  # seeded
    draws = {tuple(f for f, _ in make(s).train_files()) for s in range(6)}
    assert len(draws) > 1  # the seed changes the draw
    dm.setup("fit")
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 8, 8)
    assert [label for _, label in dm.eval_set.samples] == [0, 1, 2]
    listed = tmp_path / "lists" / "subset.txt"
    written = make(3, subset_list=str(listed)).train_files()
    assert len(listed.read_text().split()) == 6
    assert make(0, subset_list=str(listed)).train_files() == written  # read back, not redrawn


def test_balanced_subset_keeps_one_per_class():
    kept = balanced_subset([["a"], ["b", "c", "d"]], 0.01, seed=0)
    assert [len(k) for k in kept] == [1, 1]
    with pytest.raises(ValueError, match="fraction"):
        balanced_subset([["a"]], 0.0, seed=0)


def test_imagenet_bad_layouts_fail_clearly(tmp_path):
    with pytest.raises(DataLayoutError, match="train/<wnid>"):
        ImageNetSubsetDataModule(root=str(tmp_path / "nowhere"))
    write_imagenet(tmp_path)
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text(csv.read_text() + "ILSVRC2012_val_00000099,n01440764 1 1 2 2\n")
    dm = ImageNetSubsetDataModule(root=str(tmp_path), image_size=8, num_workers=0)
    with pytest.raises(DataLayoutError, match="ILSVRC2012_val_00000099"):
        dm.setup("validate")
    csv.unlink()
    with pytest.raises(DataLayoutError, match="LOC_val_solution.csv"):
        dm.setup("validate")
    bad = tmp_path / "train" / "n01440764" / "n01440764_0.JPEG"
    bad.write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match="n01440764_0"):
        ImageFiles([(str(bad), 0)], lambda im: im)[0]
    listed = tmp_path / "empty.txt"
    listed.write_text("")
    with pytest.raises(DataLayoutError, match="empty"):
        ImageNetSubsetDataModule(root=str(tmp_path), subset_list=str(listed)).train_files()


def test_digits_split_fraction_and_fixed_steps():
    dm = DigitsClassificationDataModule(image_size=16, train_fraction=0.15, batch_size=32, steps_per_epoch=5)
    dm.setup("fit")
    assert len(dm.train_set) == 180 and len(dm.eval_set) == 597
    batches = list(dm.train_dataloader())
    assert len(batches) == 5 and batches[0][0].shape == (32, 1, 16, 16)
    assert float(batches[0][0].min()) >= 0 and float(batches[0][0].max()) <= 1
    other = DigitsClassificationDataModule(split_seed=1)
    other.setup("fit")
    assert not torch.equal(other.eval_set.labels, dm.eval_set.labels)
    with pytest.raises(ValueError, match="train_fraction"):
        DigitsClassificationDataModule(train_fraction=0.0)
