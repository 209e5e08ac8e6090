"""CATs core: PCK by hand, soft-argmax, keypoint <-> flow helpers, identity and translation through the nets."""

import pytest
import torch

from lightning_modules.cats import PCK, CATsModule
from lightning_modules.cats.flow import keypoints_to_flow, pck_threshold, transfer_keypoints
from lightning_modules.cats.nets import (
    TransformerAggregator,
    correlation,
    hard_argmax_flow,
    mutual_nn_filter,
    soft_argmax_flow,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(channels=(8, 16, 32, 64), stem_width=8)


def kps(*points):
    return torch.tensor([points], dtype=torch.float32)


# ---------------------------------------------------------------- PCK


def test_pck_all_correct_none_correct_and_exactly_at_threshold():
    metric = PCK(alphas=(0.1,))
    gt = kps((10.0, 10.0), (20.0, 20.0))
    thr = torch.tensor([100.0])  # alpha * thr = 10 px
    metric.update(gt.clone(), gt, torch.tensor([2]), thr)
    assert metric.compute()["overall"].item() == pytest.approx(100.0)
    metric.reset()
    metric.update(gt + 50.0, gt, torch.tensor([2]), thr)
    assert metric.compute()["overall"].item() == pytest.approx(0.0)
    metric.reset()
    # one keypoint exactly 10 px away (counts: <=), the other 10.5 px away (does not)
    metric.update(gt + torch.tensor([[[6.0, 8.0], [10.5, 0.0]]]), gt, torch.tensor([2]), thr)
    assert metric.compute()["overall"].item() == pytest.approx(50.0)


def test_pck_averages_per_pair_not_per_keypoint_and_ignores_padding():
    metric = PCK(alphas=(0.1, 0.5), num_categories=2)
    gt = torch.zeros(2, 4, 2)
    pred = torch.zeros(2, 4, 2)
    pred[0, 0] = 100.0  # pair 0: 4 keypoints, 3 correct at alpha 0.1 -> 75 %
    pred[1, 0] = 20.0  # pair 1: 1 valid keypoint, wrong at 0.1 (28 px > 10), right at 0.5 (28 <= 50)
    pred[1, 1:] = 1000.0  # padding of pair 1: must be ignored
    metric.update(pred, gt, torch.tensor([4, 1]), torch.tensor([100.0, 100.0]), torch.tensor([0, 1]))
    out = metric.compute()
    # per pair: (75 + 0) / 2 = 37.5 at 0.1 (per keypoint it would be 3/5 = 60)
    assert out["overall"][0].item() == pytest.approx(37.5)
    assert out["overall"][1].item() == pytest.approx((75.0 + 100.0) / 2)
    assert out["per_category"][:, 0].tolist() == pytest.approx([75.0, 75.0])
    assert out["per_category"][:, 1].tolist() == pytest.approx([0.0, 100.0])


def test_pck_rejects_pairs_without_keypoints_and_bad_categories():
    metric = PCK(num_categories=2)
    with pytest.raises(ValueError, match="n_pts"):
        metric.update(kps((1.0, 1.0)), kps((1.0, 1.0)), torch.tensor([0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="category"):
        metric.update(
            kps((1.0, 1.0)), kps((1.0, 1.0)), torch.tensor([1]), torch.tensor([1.0]), torch.tensor([5])
        )


def test_pck_thresholds_bbox_image_and_keypoint_extent():
    bbox = torch.tensor([[10.0, 20.0, 50.0, 100.0]])
    assert pck_threshold("bbox", bbox=bbox).item() == 80.0
    points = torch.tensor([[[5.0, 5.0], [25.0, 12.0], [-1.0, -1.0]]])  # last one is padding
    assert pck_threshold("image", kps=points, image_size=256).item() == 256.0
    assert pck_threshold("kps", kps=points, n_pts=torch.tensor([2])).item() == 20.0


# ---------------------------------------------------------------- flow


def test_soft_argmax_on_one_hot_correlation_finds_the_source_cell():
    side = 4
    corr = torch.zeros(1, side * side, side * side)
    src_of = {t: (t + 5) % 16 for t in range(16)}  # target cell t matches source cell t+5 (wrapping)
    for t, s in src_of.items():
        corr[0, s, t] = 1.0
    flow = soft_argmax_flow(corr, beta=0.02)
    for t, s in src_of.items():
        dx, dy = s % side - t % side, s // side - t // side
        assert flow[0, :, t // side, t % side].tolist() == pytest.approx([dx, dy], abs=1e-4)
    assert torch.equal(hard_argmax_flow(corr), flow.round())


def test_ground_truth_flow_keeps_zero_displacement_and_averages_the_box():
    src = kps((40.0, 24.0), (8.0, 8.0))
    trg = kps((8.0, 24.0), (8.0, 8.0))  # first moves +32 px (= 2 cells of 16), second does not move
    flow, mask = keypoints_to_flow(src, trg, torch.tensor([2]), image_size=64, feature_size=4)
    assert mask[0, 0, 0] and mask[0, 1, 0]
    # cell (0,0) box (side 35*64/256 = 8.75, centre 8,8) holds only the still keypoint: valid zero flow
    assert flow[0, :, 0, 0].tolist() == [0.0, 0.0]
    assert flow[0, :, 1, 0].tolist() == pytest.approx([2.0, 0.0])
    assert not mask[0, 3, 3]
    # padding is ignored
    flow2, mask2 = keypoints_to_flow(src, trg, torch.tensor([1]), image_size=64, feature_size=4)
    assert not mask2[0, 0, 0] and mask2[0, 1, 0]


@pytest.mark.parametrize("sampling", ["official_int", "bilinear"])
def test_transfer_keypoints_by_a_constant_flow(sampling):
    flow = torch.zeros(1, 2, 4, 4)
    flow[:, 0] = 1.5  # cells of 16 px at 64 px
    flow[:, 1] = -0.5
    points = kps((10.0, 30.0), (50.0, 3.0))
    moved = transfer_keypoints(flow, points, 64, sampling)
    assert moved[0].flatten().tolist() == pytest.approx([34.0, 22.0, 74.0, -5.0], abs=1e-4)


# ---------------------------------------------------------------- nets


def tiny_raw_model(size=32, feature_size=8):
    torch.manual_seed(0)
    return CATsModule(
        backbone="resnet10t",
        backbone_kwargs=TINY,
        hyperpixel_ids=[0, 1],
        feature_size=feature_size,
        aggregate=False,
        input_shape=(3, size, size),
    ).eval()


def patch_features(image, cell=4):
    """Zero-mean pixel patches as features: distinct random patches have near-zero cosine similarity."""
    return [torch.nn.functional.pixel_unshuffle(image - 0.5, cell)]


def test_identity_pair_has_zero_flow():
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    corr = mutual_nn_filter(correlation(patch_features(image), patch_features(image))).mean(dim=1)
    assert soft_argmax_flow(corr, beta=0.02).abs().max() < 1e-3
    # and through the module (random-init ResNet features, raw path): the best match of each cell is itself
    model = tiny_raw_model()
    with torch.no_grad():
        assert torch.equal(model(image, image, readout="hard"), torch.zeros(2, 2, 8, 8))


def test_known_translation_is_recovered_by_correlation_and_soft_argmax():
    big = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    source = big[..., 16:80, 16:80]
    target = big[..., 24:88, 12:76]  # target(x, y) = source(x - 4, y + 8): flow (-1, +2) cells of 4 px
    corr = mutual_nn_filter(correlation(patch_features(source), patch_features(target))).mean(dim=1)
    flow = soft_argmax_flow(corr, beta=0.02)
    inner = flow[0, :, 0:14, 1:16]  # target cells whose match lies inside the source
    assert torch.allclose(inner[0], torch.full_like(inner[0], -1.0), atol=1e-3)
    assert torch.allclose(inner[1], torch.full_like(inner[1], 2.0), atol=1e-3)
    # the same translation moves keypoints exactly
    moved = transfer_keypoints(flow, kps((30.0, 20.0)), 64, "bilinear")
    assert moved[0, 0].tolist() == pytest.approx([26.0, 28.0], abs=1e-2)


def test_aggregator_shapes_and_residual_to_raw_correlation():
    torch.manual_seed(0)
    agg = TransformerAggregator(num_levels=3, side=4, proj_dim=8, depth=1, heads=4)
    corr = torch.rand(2, 3, 16, 16)
    proj = torch.rand(2, 3, 16, 8)
    out = agg(corr, proj, proj)
    assert out.shape == (2, 16, 16)
    torch.nn.init.zeros_(agg.head.weight)
    torch.nn.init.zeros_(agg.head.bias)
    # a zero head leaves only the residuals: the result is the mean over levels of the raw correlation
    assert torch.allclose(agg(corr, proj, proj), corr.mean(dim=1))


def test_mutual_nn_filter_keeps_mutual_best_and_survives_zero_maps():
    corr = torch.tensor([[[[1.0, 0.5], [0.5, 0.25]]]])
    out = mutual_nn_filter(corr)
    assert out[0, 0].flatten().tolist() == pytest.approx(
        [1.0, 0.5 * 0.5 * 1.0, 0.5 * 1.0 * 0.5, 0.25 * 0.5 * 0.5]
    )
    assert torch.equal(mutual_nn_filter(torch.zeros(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2))


def test_frozen_backbone_gets_no_gradient_and_keeps_batchnorm_statistics():
    torch.manual_seed(0)
    model = CATsModule(
        backbone="resnet10t",
        backbone_kwargs=TINY,
        hyperpixel_ids=[0, 1],
        feature_size=8,
        proj_dim=8,
        heads=4,
        freeze_backbone=True,
        input_shape=(3, 32, 32),
    )
    model.train()
    bn_before = {k: v.clone() for k, v in model.features.state_dict().items() if "running" in k}
    src = torch.full((2, 40, 2), -1.0)
    src[:, :3] = torch.tensor([[5.0, 5.0], [20.0, 9.0], [12.0, 28.0]])
    batch = {
        "src_img": torch.rand(2, 3, 32, 32),
        "trg_img": torch.rand(2, 3, 32, 32),
        "src_kps": src,
        "trg_kps": src.clone(),
        "n_pts": torch.tensor([3, 3]),
    }
    model._loss(batch).backward()
    assert all(p.grad is None for p in model.features.parameters())
    assert all(p.grad is not None for p in model.aggregator.parameters())
    for k, v in model.features.state_dict().items():
        if k in bn_before:
            assert torch.equal(v, bn_before[k]), k
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert [g["lr"] for g in groups] == [3e-5]  # only the aggregator group
