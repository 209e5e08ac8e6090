"""SSL data: CIFAR pickle fixtures, an ImageNet-100 ImageFolder fixture, digits; views, normalisation, errors."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.ssl.datamodule import CIFARDataModule, DigitsDataModule, ImageNet100DataModule
from datamodules.ssl.datasets import IMAGENET100_CLASSES, read_cifar, read_class_list


def write_cifar(root, name: str = "cifar10", n: int = 4):
    """The python-pickle release layout with `n` random images per file; returns the first train batch."""
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, files, key, classes = (
            root / "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
            b"labels",
            10,
        )
    else:
        folder, files, key, classes = root / "cifar-100-python", ["train", "test"], b"fine_labels", 100
    folder.mkdir(parents=True)
    first = None
    for f in files:
        entry = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            key: rng.integers(0, classes, n).tolist(),
        }
        first = first or entry
        with open(folder / f, "wb") as fh:
            pickle.dump(entry, fh)
    return first


def test_cifar10_pickles_are_read_channel_major(tmp_path):
    first = write_cifar(tmp_path)
    images, labels = read_cifar(tmp_path, "cifar10", train=True)
    assert images.shape == (20, 32, 32, 3) and labels.shape == (20,)
    row = first[b"data"][1]
    assert images[1, 5, 7].tolist() == [row[5 * 32 + 7], row[1024 + 5 * 32 + 7], row[2048 + 5 * 32 + 7]]
    assert labels[:4].tolist() == first[b"labels"]
    test_images, _ = read_cifar(tmp_path, "cifar10", train=False)
    assert test_images.shape == (4, 32, 32, 3)


def test_cifar_datamodule_views_raw_and_normalised(tmp_path):
    write_cifar(tmp_path, "cifar100")
    dm = CIFARDataModule(
        root=str(tmp_path),
        dataset="cifar100",
        recipe="simclr",
        batch_size=4,
        eval_batch_size=8,
        num_workers=0,
        clean_view=True,
    )
    assert dm.num_classes == 100 and dm.input_shape == (3, 32, 32)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert len(batch["views"]) == 2 and batch["views"][0].shape == (4, 3, 32, 32)
    raw = batch["raw_views"][0]
    assert raw.min() >= 0 and raw.max() <= 1
    mean = torch.tensor(dm.mean).view(1, 3, 1, 1)
    std = torch.tensor(dm.std).view(1, 3, 1, 1)
    torch.testing.assert_close(batch["views"][0], (raw - mean) / std)
    assert not torch.equal(batch["raw_views"][0], batch["raw_views"][1])  # two different random views
    assert batch["clean"].shape == (4, 3, 32, 32)
    bank, queries = dm.val_dataloader()
    assert len(bank.dataset) == 4 and len(queries.dataset) == 4


def test_missing_or_corrupt_cifar_gives_clear_error(tmp_path):
    with pytest.raises(DataLayoutError, match="cifar-10-batches-py.*\n.*Expected"):
        read_cifar(tmp_path, "cifar10", train=True)
    dm = CIFARDataModule(root=str(tmp_path), num_workers=0)
    with pytest.raises(DataLayoutError, match="download true"):
        dm.setup("fit")
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"not a pickle")
    with pytest.raises(DataLayoutError, match="not a CIFAR"):
        read_cifar(tmp_path, "cifar100", train=True)


def write_imagenet(root, wnids, n: int = 3):
    for split in ("train", "val"):
        for i, w in enumerate(wnids):
            (root / split / w).mkdir(parents=True)
            for k in range(n):
                arr = np.full((40, 48, 3), 40 * i + 10 * k, dtype=np.uint8)
                Image.fromarray(arr).save(root / split / w / f"{w}_{k}.PNG")


def test_imagenet100_folder_with_class_list(tmp_path):
    wnids = read_class_list(IMAGENET100_CLASSES)
    assert len(wnids) == 100 and wnids[0] == "n02869837"
    chosen = wnids[:2]
    write_imagenet(tmp_path / "in100", chosen + ["n99999999"])  # an extra class not in the list is ignored
    (tmp_path / "list.txt").write_text("\n".join(chosen) + "\n")
    dm = ImageNet100DataModule(
        root=str(tmp_path / "in100"),
        class_list=str(tmp_path / "list.txt"),
        image_size=32,
        resize=36,
        batch_size=2,
        eval_batch_size=6,
        num_workers=0,
    )
    assert dm.num_classes == 2
    dm.setup("fit")
    assert len(dm.train_set) == 6 and len(dm.test_set) == 6
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["views"][0].shape == (2, 3, 32, 32)
    x, y = next(iter(dm.val_dataloader()[1]))
    assert x.shape == (6, 3, 32, 32) and sorted(set(y.tolist())) == [0, 1]


def test_imagenet100_missing_data_and_corrupt_images(tmp_path):
    with pytest.raises(DataLayoutError, match="train does not exist"):
        ImageNet100DataModule(root=str(tmp_path / "nothing"), num_workers=0).setup("fit")
    write_imagenet(tmp_path / "in", ["n02869837"])
    with pytest.raises(DataLayoutError, match="99 of 100 listed classes missing"):
        ImageNet100DataModule(root=str(tmp_path / "in"), num_workers=0).setup("fit")
    (tmp_path / "list.txt").write_text("n02869837\n")
    (tmp_path / "in" / "val" / "n02869837" / "n02869837_0.PNG").write_bytes(b"garbage")
    dm = ImageNet100DataModule(
        root=str(tmp_path / "in"),
        class_list=str(tmp_path / "list.txt"),
        image_size=32,
        resize=36,
        num_workers=0,
    )
    dm.setup("test")
    with pytest.raises(CorruptImageError, match="n02869837_0.PNG"):
        dm.test_set[0]


def test_digits_split_and_strength_views():
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    assert len(dm.train_set) == 1200 and len(dm.test_set) == 597 and dm.input_shape == (1, 8, 8)
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    v1, v2 = batch["raw_views"]
    assert v1.shape == (64, 1, 8, 8) and v1.min() >= 0 and v1.max() <= 1
    assert not torch.equal(v1, v2)
    with pytest.raises(ValueError, match="n_train"):
        DigitsDataModule(n_train=5000).setup("fit")
