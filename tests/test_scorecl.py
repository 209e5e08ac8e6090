"""ScoreCL callback: score values, pair gaps, weights (detached, finite, normalised as configured), the per-pair
contract on two different modules, the clear error for a module without it, pretraining and checkpoint state."""

import pytest
import torch

from callbacks.scorecl import ScoreWeighting, WeightedMean, pair_weights
from lightning_modules.classifier import ImageClassifier
from lightning_modules.ssl.base import mean_reducer
from lightning_modules.ssl.score_net import build_score_net, dsm_loss, geometric_sigmas
from lightning_modules.ssl.simclr import SimCLR
from lightning_modules.ssl.vicreg import VICReg

SMALL = dict(
    backbone="small_cnn",
    input_shape=(1, 8, 8),
    backbone_kwargs={"width": 8},
    proj_hidden_dim=16,
    proj_output_dim=8,
    scale_lr=False,
)


def batch(n: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    raw = [torch.rand(n, 1, 8, 8, generator=g) for _ in range(2)]
    return {
        "views": [(r - 0.3) / 0.4 for r in raw],
        "raw_views": raw,
        "labels": torch.arange(n) % 10,
        "clean": torch.rand(n, 1, 8, 8, generator=g),
    }


def built(**kwargs) -> ScoreWeighting:
    cb = ScoreWeighting(net_kwargs={"width": 8}, **kwargs)
    cb.build(1, 8)
    return cb


def test_identical_views_give_equal_scores_and_zero_gap():
    cb = built()
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(cb.score_values(x), cb.score_values(x.clone()))
    assert cb.pair_gaps([x, x.clone()], None).abs().max().item() == 0.0
    assert cb.pair_gaps([x, torch.rand(5, 1, 8, 8)], None).min().item() > 0.0
    # reference: original compares each view with the clean image
    cb_orig = built(reference="original")
    assert cb_orig.pair_gaps([x, x.clone()], x.clone()).abs().max().item() == 0.0
    with pytest.raises(ValueError, match="clean_view"):
        cb_orig.pair_gaps([x, x], None)


def test_weights_normalised_as_configured():
    d = torch.tensor([0.5, 1.0, 2.0, 4.5], requires_grad=True)
    w = pair_weights(d, "mean")
    assert not w.requires_grad and torch.isfinite(w).all()
    assert w.mean().item() == pytest.approx(1.0) and w[3] / w[0] == pytest.approx(9.0)
    mm = pair_weights(d, "minmax")
    assert mm.min().item() == 0.0 and mm.max().item() == pytest.approx(1.0)
    sm = pair_weights(d, "softmax", temperature=2.0)
    assert sm.sum().item() == pytest.approx(4.0) and torch.all(sm[1:] > sm[:-1])
    clipped = pair_weights(d, "mean", clip_min=0.5, clip_max=1.5)
    assert clipped.min().item() >= 0.5 and clipped.max().item() <= 1.5
    blended = pair_weights(d, "mean", blend=0.5)
    torch.testing.assert_close(blended, 0.5 + 0.5 * w)
    assert torch.all(pair_weights(torch.zeros(4)) == 1.0)  # all gaps zero: uniform, not NaN
    with pytest.raises(ValueError, match="normalize"):
        pair_weights(d, "bogus")


@pytest.mark.parametrize("module_cls", [SimCLR, VICReg])
def test_contract_weights_the_per_pair_losses(module_cls):
    torch.manual_seed(0)
    module = module_cls(**SMALL)
    b = batch()
    cb = built()
    w = cb.weights_for(module, b)
    assert w.shape == (8,) and not w.requires_grad and torch.isfinite(w).all()
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5) and w.std().item() > 0
    module.log = lambda *a, **k: None
    feats = [module.backbone(v) for v in b["views"]]
    per_pair, extra, _ = module.ssl_losses(feats, b)
    module.pair_reducer = WeightedMean(w)
    loss_weighted = module.training_step(b, 0)
    module.pair_reducer = mean_reducer
    loss_plain = module.training_step(b, 0)
    # only the per-pair part changes, by exactly sum_i (w_i - 1) l_i / N
    delta = ((w - 1) * per_pair.detach()).mean()
    assert (loss_weighted - loss_plain).item() == pytest.approx(delta.item(), rel=1e-4, abs=1e-6)
    torch.testing.assert_close(module.last_pair_losses, per_pair.detach())


def test_uniform_and_random_controls():
    module = SimCLR(**SMALL)
    b = batch(16)
    assert torch.all(built(weighting="uniform").weights_for(module, b) == 1.0)
    score_w = built().weights_for(module, b)
    random_w = built(weighting="random").weights_for(module, b)
    torch.testing.assert_close(random_w.sort().values, score_w.sort().values)  # same weights, shuffled
    assert not torch.allclose(random_w, score_w)


def test_module_without_per_pair_losses_gets_a_clear_error():
    with pytest.raises(TypeError, match="per-pair losses"):
        ScoreWeighting._check_contract(ImageClassifier(backbone="small_cnn", input_shape=(1, 8, 8)))
    ScoreWeighting._check_contract(SimCLR(**SMALL))  # no error


def test_dsm_pretraining_lowers_the_loss_and_state_round_trips():
    torch.manual_seed(0)
    cb = built(pretrain_steps=60, score_lr=3e-3)
    x = torch.rand(64, 1, 8, 8) * 0.2 + torch.linspace(0, 0.8, 8).view(1, 1, 1, 8)
    loader = [(x[:32], None), (x[32:], None)]
    losses = cb.pretrain(loader, 60, "cpu")
    assert len(losses) == 60 and cb.trained
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    state = cb.state_dict()
    other = ScoreWeighting(net_kwargs={"width": 8})
    other.load_state_dict(state)  # before build: kept pending, applied by build
    other.build(1, 8)
    assert other.trained
    torch.testing.assert_close(other.score_values(x[:4]), cb.score_values(x[:4]))


def test_score_nets_are_noise_conditional():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    assert sigmas[0].item() == pytest.approx(1.0) and sigmas[-1].item() == pytest.approx(0.01)
    x = torch.rand(2, 1, 8, 8)
    for arch, kwargs in [("cnn", {"width": 8}), ("unet", {"channels": (8, 16), "norm_num_groups": 4})]:
        net = build_score_net(arch, 1, 8, **kwargs)
        assert net(x, torch.full((2,), 0.1)).shape == x.shape
        assert torch.isfinite(dsm_loss(net, x, sigmas))


def test_score_values_track_augmentation_strength_on_digits():
    """ScoreCL's premise (our spec, section 8, step A): stronger-augmented views get larger score values."""
    from scripts.scorecl_diagnostics import diagnose

    r = diagnose(seed=0, pretrain_steps=100, pairs=300, width=16)
    assert r["rho_strength_score"] > 0.3, r
    assert r["rho_gap_strength_gap_score"] > 0.15, r
    assert r["dsm_loss_first_last"][1] < r["dsm_loss_first_last"][0]
