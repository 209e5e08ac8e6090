"""Image data for diffusion: FFHQ / CelebA-HQ layouts on tiny on-disk fixtures, split lists, clear errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.images import DigitsDataModule, ImageFolderDataModule


def write_ffhq(root, n=12, size=32):
    rng = np.random.default_rng(0)
    folder = root / "images1024x1024" / "00000"
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def test_ffhq_layout_split_list_and_range(tmp_path):
    write_ffhq(tmp_path)
    (tmp_path / "ffhqvalidation.txt").write_text("00010.png\n00011.png\n")
    dm = ImageFolderDataModule(
        str(tmp_path),
        "ffhq",
        image_size=16,
        eval_list=str(tmp_path / "ffhqvalidation.txt"),
        batch_size=4,
        eval_batch_size=2,
        num_workers=0,
    )
    assert dm.input_shape == (3, 16, 16)
    dm.setup("fit")
    assert len(dm.train_set) == 12 and len(dm.eval_set) == 2
    assert dm.eval_set.files[0].name == "00010.png"
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.min() >= -1 and x.max() <= 1 and x.min() < -0.5
    assert torch.equal(
        next(iter(dm.predict_dataloader())), torch.arange(dm.predict_batch_size).clamp(max=63)[:64]
    )


def test_celebahq_layout_and_seeded_eval_subset(tmp_path):
    folder = tmp_path / "CelebA-HQ-img"
    folder.mkdir()
    for i in range(5):
        Image.new("RGB", (20, 24), (i * 40, 0, 0)).save(folder / f"{i}.jpg")
    dm = ImageFolderDataModule(str(tmp_path), "celebahq", image_size=8, num_eval_images=3, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_set) == 5 and len(dm.eval_set) == 3
    assert dm.eval_set[0][0].shape == (3, 8, 8)


def test_missing_and_bad_data_give_clear_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="images1024x1024"):
        ImageFolderDataModule(str(tmp_path / "nowhere"), "ffhq").setup("fit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataLayoutError, match="CelebA-HQ-img"):
        ImageFolderDataModule(str(tmp_path / "empty"), "celebahq").setup("fit")
    write_ffhq(tmp_path / "ffhq", n=2)
    (tmp_path / "list.txt").write_text("99999.png\n")
    with pytest.raises(DataLayoutError, match="99999.png"):
        ImageFolderDataModule(str(tmp_path / "ffhq"), "ffhq", train_list=str(tmp_path / "list.txt")).setup(
            "fit"
        )
    (tmp_path / "ffhq" / "images1024x1024" / "00000" / "00001.png").write_bytes(b"not a png")
    dm = ImageFolderDataModule(str(tmp_path / "ffhq"), "ffhq", image_size=8, num_workers=0)
    dm.setup("fit")
    with pytest.raises(CorruptImageError, match="00001.png"):
        dm.train_set[1]
    with pytest.raises(ValueError, match="dataset must be one of"):
        ImageFolderDataModule(str(tmp_path), "imagenet")


def test_digits_split_and_range():
    dm = DigitsDataModule(holdout=400, batch_size=100)
    dm.setup("fit")
    assert len(dm.train_set) == 1397 and len(dm.eval_set) == 400
    train_idx, eval_idx = set(dm.train_set.indices), set(dm.eval_set.indices)
    assert not train_idx & eval_idx
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (100, 1, 8, 8) and float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert dm.input_shape == (1, 8, 8) and set(y.tolist()) <= set(range(10))
