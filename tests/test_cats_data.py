"""CATs data: tiny SPair-71k / PF-PASCAL / PF-WILLOW fixtures in their official layouts, and synthetic warps."""

import csv
import json

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from datamodules.cats import CorrespondenceDataModule, SyntheticWarpDataModule, bbox_keeping_crop
from datamodules.errors import CorruptImageError, DataLayoutError
from lightning_modules.cats.flow import keypoints_to_flow

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_jpeg(path, w, h, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


SRC_KPS = [[10, 20], [30, 40], [50, 60], [70, 10], [90, 30]]
TRG_KPS = [[12, 22], [32, 42], [52, 62], [72, 12], [92, 32]]


def make_spair(root, pairs=(("000001-a-b:cat"), ("000002-b-c:cat"))):
    base = root / "SPair-71k"
    for i, name in enumerate("abc"):
        write_jpeg(base / "JPEGImages" / "cat" / f"{name}.jpg", 128, 64, seed=i)
    (base / "JPEGImages" / "dog").mkdir(parents=True)
    (base / "Layout" / "large").mkdir(parents=True)
    for split in ("trn", "val", "test"):
        (base / "Layout" / "large" / f"{split}.txt").write_text("\n".join(pairs) + "\n")
        (base / "PairAnnotation" / split).mkdir(parents=True)
        for pair in pairs:
            ann = {
                "src_kps": SRC_KPS,
                "trg_kps": TRG_KPS,
                "src_bndbox": [8, 4, 104, 60],
                "trg_bndbox": [0, 0, 128, 64],
                "category": "cat",
            }
            (base / "PairAnnotation" / split / f"{pair}.json").write_text(json.dumps(ann))
    return base


def test_spair_fixture_is_read_rescaled_padded_with_bbox_threshold(tmp_path):
    make_spair(tmp_path)
    dm = CorrespondenceDataModule(
        root=str(tmp_path), benchmark="spair", image_size=64, batch_size=2, num_workers=0
    )
    assert dm.category_names == ["cat", "dog"] and dm.num_classes == 2 and dm.input_shape == (3, 64, 64)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["src_img"].shape == (2, 3, 64, 64) and batch["src_kps"].shape == (2, 40, 2)
    assert batch["n_pts"].tolist() == [5, 5]
    # 128x64 -> 64x64: x halves, y unchanged; padding is -1
    assert batch["src_kps"][0, :5].tolist() == [
        [5.0, 20.0],
        [15.0, 40.0],
        [25.0, 60.0],
        [35.0, 10.0],
        [45.0, 30.0],
    ]
    assert (batch["src_kps"][0, 5:] == -1).all()
    assert batch["src_bbox"][0].tolist() == [4.0, 4.0, 52.0, 60.0]
    assert batch["category"].tolist() == [0, 0]
    # the ground-truth flow built from these keypoints is valid where the target keypoints are
    flow, mask = keypoints_to_flow(batch["src_kps"], batch["trg_kps"], batch["n_pts"], 64, 4)
    assert mask.any() and torch.isfinite(flow).all()


def test_spair_bad_annotations_give_clear_errors(tmp_path):
    base = make_spair(tmp_path)
    ann_path = base / "PairAnnotation" / "test" / "000001-a-b:cat.json"
    ann = json.loads(ann_path.read_text())
    ann["trg_kps"] = ann["trg_kps"][:4]
    ann_path.write_text(json.dumps(ann))
    dm = CorrespondenceDataModule(root=str(tmp_path), benchmark="spair", image_size=64, num_workers=0)
    with pytest.raises(DataLayoutError, match="5 source vs 4 target keypoints"):
        dm.setup("test")
    del ann["src_kps"]
    ann_path.write_text(json.dumps(ann))
    with pytest.raises(DataLayoutError, match="'src_kps' is missing"):
        dm.setup("test")
    (base / "Layout" / "large" / "test.txt").write_text("")
    with pytest.raises(DataLayoutError, match="lists no pairs"):
        dm.setup("test")


def test_missing_dataset_names_the_layout_and_where_to_get_it(tmp_path):
    with pytest.raises(DataLayoutError, match="(?s)SPair-71k.*Expected layout.*cvlab.postech"):
        CorrespondenceDataModule(root=str(tmp_path), benchmark="spair")
    dm = CorrespondenceDataModule(root=str(tmp_path), benchmark="pfpascal")
    with pytest.raises(DataLayoutError, match="(?s)trn_pairs.csv.*Expected layout"):
        dm.setup("fit")


def test_corrupt_image_is_named(tmp_path):
    base = make_spair(tmp_path)
    (base / "JPEGImages" / "cat" / "a.jpg").write_bytes(b"not a jpeg")
    dm = CorrespondenceDataModule(root=str(tmp_path), benchmark="spair", image_size=64, num_workers=0)
    dm.setup("test")
    with pytest.raises(CorruptImageError, match="a.jpg"):
        dm.test_set[0]


def make_pfpascal(root, trg_rows=5):
    base = root / "PF-PASCAL"
    kps = np.array(SRC_KPS, dtype=float)
    kps[4] = np.nan  # an unannotated keypoint: dropped from both sides
    for name, seed in (("2008_000001", 0), ("2008_000002", 1)):
        write_jpeg(base / "JPEGImages" / f"{name}.jpg", 100, 80, seed)
    ann = base / "Annotations" / "cat"
    ann.mkdir(parents=True)
    scipy.io.savemat(str(ann / "2008_000001.mat"), {"kps": kps, "bbox": np.array([[10, 10, 90, 70]])})
    scipy.io.savemat(
        str(ann / "2008_000002.mat"), {"kps": kps[:trg_rows] + 1, "bbox": np.array([[0, 0, 100, 80]])}
    )
    for split in ("trn", "val", "test"):
        with open(base / f"{split}_pairs.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["source_image", "target_image", "class", "flip"][: 4 if split == "trn" else 3])
            row = [
                "PF-dataset-PASCAL/JPEGImages/2008_000001.jpg",
                "PF-dataset-PASCAL/JPEGImages/2008_000002.jpg",
                8,
            ]
            writer.writerow([*row, 1] if split == "trn" else row)
    return base


def test_pfpascal_fixture_drops_nan_keypoints_and_honours_flip(tmp_path):
    make_pfpascal(tmp_path)
    dm = CorrespondenceDataModule(
        root=str(tmp_path), benchmark="pfpascal", image_size=100, augment=False, num_workers=0
    )
    assert dm.num_classes == 20 and dm.category_names[7] == "cat"
    dm.setup("fit")
    dm.setup("test")
    test = dm.test_set[0]
    assert int(test["n_pts"]) == 4 and int(test["category"]) == 7
    # 100x80 -> 100x100: y scaled by 1.25
    assert test["src_kps"][:4].tolist() == [[10.0, 25.0], [30.0, 50.0], [50.0, 75.0], [70.0, 12.5]]
    flipped = dm.train_set[0]  # the trn CSV sets flip: x -> 100 - x, images mirrored
    assert flipped["src_kps"][:4, 0].tolist() == [90.0, 70.0, 50.0, 30.0]
    assert torch.allclose(flipped["src_img"], test["src_img"].flip(-1))


def test_pfpascal_mismatched_keypoint_rows_give_a_clear_error(tmp_path):
    make_pfpascal(tmp_path, trg_rows=3)
    dm = CorrespondenceDataModule(root=str(tmp_path), benchmark="pfpascal", num_workers=0)
    with pytest.raises(DataLayoutError, match="5 keypoint rows but 2008_000002.mat has 3"):
        dm.setup("test")


def test_pfwillow_fixture_reads_ten_keypoints_per_image(tmp_path):
    make_pfpascal(tmp_path)
    base = tmp_path / "PF-WILLOW"
    write_jpeg(base / "car(G)" / "a.png", 50, 50, 0)
    write_jpeg(base / "car(G)" / "b.png", 50, 100, 1)
    xs = list(range(1, 11))
    with open(base / "test_pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["imageA", "imageB", *[f"c{i}" for i in range(40)]])
        writer.writerow(
            ["PF-dataset/car(G)/a.png", "PF-dataset/car(G)/b.png", *xs, *xs, *xs, *[2 * x for x in xs]]
        )
    dm = CorrespondenceDataModule(
        root=str(tmp_path), benchmark="pfpascal", test_benchmark="pfwillow", image_size=100, num_workers=0
    )
    assert dm.category_names == ["car(G)"]
    dm.setup("test")
    pair = dm.test_set[0]
    assert int(pair["n_pts"]) == 10
    assert pair["src_kps"][:10, 0].tolist() == [2.0 * x for x in xs]  # 50 -> 100 px
    assert pair["trg_kps"][:10, 1].tolist() == [2.0 * x for x in xs]  # y 2x over 100 -> 100 px
    with open(base / "test_pairs.csv", "a", newline="") as f:
        csv.writer(f).writerow(["PF-dataset/car(G)/a.png", "PF-dataset/car(G)/b.png", *xs])
    with pytest.raises(DataLayoutError, match="2 paths \\+ 40 coordinates"):
        dm.setup("test")


def test_bbox_keeping_crop_contains_the_box_and_moves_keypoints():
    image = torch.zeros(3, 50, 80)
    kps = torch.tensor([[30.0, 20.0], [60.0, 40.0]])
    bbox = torch.tensor([20.0, 10.0, 70.0, 45.0])
    for seed in range(5):
        crop, moved, box = bbox_keeping_crop(image, kps, bbox, torch.Generator().manual_seed(seed))
        h, w = crop.shape[-2:]
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= w and box[3] <= h
        assert torch.allclose(moved - kps, (box - bbox)[:2].expand(2, 2))


def test_synthetic_pairs_are_deterministic_and_keypoints_are_exact():
    dm = SyntheticWarpDataModule(images="photos", image_size=48, n_train=4, n_val=2, n_test=2)
    dm.setup()
    a, b = dm.train_set[1], dm.train_set[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(dm.train_set[0]["trg_img"], a["trg_img"])
    dm.train_set.gain, dm.train_set.noise = 0.0, 0.0
    pair = dm.train_set[1]
    n = int(pair["n_pts"])
    assert n == 30

    def sample(image, points):
        grid = (points[:n] / 48 * 2 - 1)[None, :, None, :]
        return torch.nn.functional.grid_sample(image[None], grid, align_corners=False)[0, :, :, 0]

    # the target at a target keypoint shows the source at the matching source keypoint (up to interpolation)
    err = (sample(pair["src_img"], pair["src_kps"]) - sample(pair["trg_img"], pair["trg_kps"])).abs()
    assert err.mean() < 0.02
    shuffled = sample(pair["src_img"], pair["src_kps"].roll(1, 0))
    assert (shuffled - sample(pair["trg_img"], pair["trg_kps"])).abs().mean() > 5 * err.mean()
    digits = SyntheticWarpDataModule(images="digits", image_size=16, n_train=2, n_val=2, n_test=2, num_kps=10)
    digits.setup()
    assert digits.num_classes == 10 and digits.test_set[0]["src_img"].shape == (3, 16, 16)
