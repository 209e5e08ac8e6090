"""VOC-format segmentation data: the loader on a tiny on-disk fixture (real palette PNGs), its errors, the paired
transforms, and mIoU on hand-made masks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.errors import CorruptImageError, DataLayoutError
from datamodules.voc import IGNORE_INDEX, PairedTransform, VOCSegmentationDataModule, save_mask, voc_palette
from lightning_modules.houghcl.segmentation import SegmentationModule


def write_voc(
    root: Path, ids: dict[str, list[str]], size: tuple[int, int] = (20, 30)
) -> dict[str, np.ndarray]:
    """A VOC tree: JPEGs with a bright left half, palette masks (class 1 left half, 2 right, a 255 rim)."""
    h, w = size
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    masks = {}
    for split, names in ids.items():
        for name in names:
            pixels = np.zeros((h, w, 3), np.uint8)
            pixels[:, : w // 2] = 200
            Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg")
            mask = np.full((h, w), 2, np.uint8)
            mask[:, : w // 2] = 1
            mask[0] = IGNORE_INDEX
            mask[-1, :] = 0
            save_mask(mask, root / "SegmentationClass" / f"{name}.png")
            masks[name] = mask
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return masks


def dm(root: Path, **kwargs) -> VOCSegmentationDataModule:
    opts = {
        "num_classes": 3,
        "crop_size": 16,
        "base_size": 32,
        "eval_size": 32,
        "batch_size": 2,
        "num_workers": 0,
    }
    return VOCSegmentationDataModule(root=str(root), **{**opts, **kwargs})


def test_loader_reads_palette_masks_and_pairs_transforms(tmp_path):
    masks = write_voc(tmp_path, {"train": ["a", "b"], "val": ["c"]})
    assert Image.open(tmp_path / "SegmentationClass" / "a.png").mode == "P"
    data = dm(tmp_path, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    data.setup("fit")
    assert data.input_shape == (3, 16, 16) and data.num_classes == 3
    # val: 20x30 fits in 32 -> original resolution, padded with 255 (mask) and 0 (image)
    image, mask = data.dataset("val")[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.int64
    assert torch.equal(mask[:20, :30], torch.from_numpy(masks["c"]).long())
    assert (mask[20:] == IGNORE_INDEX).all() and (mask[:, 30:] == IGNORE_INDEX).all()
    # train: random scale-crop + flip; every labelled pixel agrees with the image (class 1 = bright half)
    torch.manual_seed(0)
    flipped_seen = set()
    for _ in range(10):
        image, mask = data.dataset("train")[0]
        assert image.shape == (3, 16, 16) and mask.shape == (16, 16)
        values = set(mask.unique().tolist())
        assert values <= {0, 1, 2, IGNORE_INDEX}  # nearest interpolation: no blended labels
        bright = (image[0] > 0.5).float()  # image resampling blurs the one edge column; masks stay sharp
        assert bright[mask == 1].mean() > 0.85 if (mask == 1).any() else True
        assert bright[mask == 2].mean() < 0.15 if (mask == 2).any() else True
        rows = mask[(mask == 1).any(1) & (mask == 2).any(1)]
        if len(rows):
            flipped_seen.add(bool((rows[0] == 1).nonzero().min() > (rows[0] == 2).nonzero().min()))
    assert flipped_seen == {True, False}
    batch = next(iter(data.train_dataloader()))
    assert batch[0].shape == (2, 3, 16, 16) and batch[1].shape == (2, 16, 16)


def test_paired_transform_shrinks_large_images_for_evaluation():
    t = PairedTransform(False, 8, eval_size=10, base_size=8, mean=(0.0,), std=(1.0,))
    image, mask = t(torch.rand(1, 40, 20), torch.ones(40, 20, dtype=torch.long))
    assert image.shape == (1, 10, 10) and (mask[:, :5] == 1).all() and (mask[:, 5:] == IGNORE_INDEX).all()


def test_loader_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist"):
        dm(tmp_path / "nothing").setup("fit")
    write_voc(tmp_path, {"train": ["a", "b"], "val": ["c"]})
    with pytest.raises(DataLayoutError, match="split list .*trainaug.txt is missing"):
        dm(tmp_path, train_split="trainaug").setup("fit")
    with pytest.raises(DataLayoutError, match="SegmentationClassAug is missing"):
        dm(tmp_path, mask_dir="SegmentationClassAug").setup("fit")
    (tmp_path / "ImageSets/Segmentation/empty.txt").write_text("\n")
    with pytest.raises(DataLayoutError, match="empty"):
        dm(tmp_path, val_split="empty").setup("validate")
    (tmp_path / "ImageSets/Segmentation/ghost.txt").write_text("a\nghost\n")
    with pytest.raises(DataLayoutError, match="1 without JPEGImages.*ghost"):
        dm(tmp_path, val_split="ghost").setup("validate")
    # out-of-range class values (not 255) and wrong num_classes
    with pytest.raises(DataLayoutError, match=r"values \[2\] outside \[0, 2\)"):
        dm(tmp_path, num_classes=2).dataset("val")[0]
    # an RGB (colour) mask, a corrupt image, an image/mask size mismatch
    Image.new("RGB", (30, 20)).save(tmp_path / "SegmentationClass" / "c.png")
    with pytest.raises(DataLayoutError, match="mode 'RGB'"):
        dm(tmp_path).dataset("val")[0]
    (tmp_path / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CorruptImageError, match="a.jpg"):
        dm(tmp_path).dataset("train")[0]
    save_mask(np.zeros((5, 5), np.uint8), tmp_path / "SegmentationClass" / "b.png")
    with pytest.raises(DataLayoutError, match="5x5 but"):
        dm(tmp_path).dataset("train")[1]
    with pytest.raises(DataLayoutError, match="fewer than batch_size"):
        dm(tmp_path, batch_size=3).train_dataloader()


def test_voc_palette_matches_the_devkit_colours():
    palette = voc_palette()
    assert palette[3:6] == [128, 0, 0] and palette[6:9] == [0, 128, 0] and palette[45:48] == [192, 128, 128]


def test_miou_on_hand_made_masks():
    """3 classes, one ignored pixel, class 2 in neither mask (left out of the mean, VOC convention).

    class 0: predicted at pixels {0, 1, 4}, true at {0, 1, 2} -> IoU 2/4; class 1: predicted {2, 3}, true {3, 4}
    -> IoU 1/3; mIoU = (1/2 + 1/3) / 2 = 5/12. Pixel accuracy 3/5 (pixel 5 is ignored)."""
    model = SegmentationModule(
        backbone="small_cnn", backbone_kwargs={"width": 4}, num_classes=3, input_shape=(1, 8, 8)
    )
    target = torch.tensor([[[0, 0, 0, 1, 1, IGNORE_INDEX]]])
    pred = torch.tensor([[[0, 0, 1, 1, 0, 1]]])
    model.val_miou.update(pred, target)
    assert model.val_miou.compute().item() == pytest.approx(5 / 12)
    model.val_acc.update(pred, target)
    assert model.val_acc.compute().item() == pytest.approx(3 / 5)
    # the loss averages over labelled pixels only and is 0 (not NaN) for an all-ignored batch
    logits = torch.zeros(1, 3, 1, 6)
    loss = SegmentationModule.pixel_loss(logits, target)
    assert loss.item() == pytest.approx(np.log(3))
    assert SegmentationModule.pixel_loss(logits, torch.full_like(target, IGNORE_INDEX)).item() == 0.0
