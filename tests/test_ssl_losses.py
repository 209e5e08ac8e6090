"""SSL losses against straightforward independent computations; per-pair losses average to the batch losses."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.ssl.losses import (
    nt_xent_per_pair,
    simsiam_per_pair,
    vicreg_covariance,
    vicreg_invariance_per_pair,
    vicreg_variance,
    whiten,
    wmse_per_pair,
)
from lightning_modules.ssl.optim import warmup_cosine_factor


def naive_nt_xent(z1, z2, t):
    """Loop over the 2N anchors: -log(exp(s(i, pos)/t) / sum_{k != i} exp(s(i, k)/t))."""
    z = F.normalize(torch.cat([z1, z2]), dim=1).double()
    n2 = z.shape[0]
    n = n2 // 2
    losses = []
    for i in range(n2):
        pos = (i + n) % n2
        num = math.exp(float(z[i] @ z[pos]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        losses.append(-math.log(num / den))
    return torch.tensor([(losses[i] + losses[i + n]) / 2 for i in range(n)], dtype=torch.float64)


def test_nt_xent_matches_naive_and_standard_cross_entropy():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    per_pair = nt_xent_per_pair(z1, z2, 0.2)
    assert per_pair.shape == (6,)
    torch.testing.assert_close(per_pair.double(), naive_nt_xent(z1, z2, 0.2), atol=1e-4, rtol=1e-4)
    # the batch loss (mean of per-pair terms) is the usual 2N-way cross-entropy with self-similarities masked
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / 0.2).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(6, 12), torch.arange(6)])
    torch.testing.assert_close(per_pair.mean(), F.cross_entropy(logits, target), atol=1e-5, rtol=1e-5)


def test_nt_xent_with_gathered_negatives_equals_the_global_batch():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    full = nt_xent_per_pair(z1, z2, 0.5)
    second_half = nt_xent_per_pair(z1[4:], z2[4:], 0.5, all_z1=z1, all_z2=z2, offset=4)
    torch.testing.assert_close(second_half, full[4:])
    assert not torch.allclose(nt_xent_per_pair(z1[4:], z2[4:], 0.5), full[4:], atol=1e-3)


def test_simsiam_matches_definition_and_stops_gradients():
    g = torch.Generator().manual_seed(2)
    p1, p2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    z1 = torch.randn(5, 7, generator=g, requires_grad=True)
    z2 = torch.randn(5, 7, generator=g, requires_grad=True)
    per_pair = simsiam_per_pair(p1, p2, z1, z2)
    for i in range(5):
        c1 = float(p1[i] @ z2[i].detach() / (p1[i].norm() * z2[i].detach().norm()))
        c2 = float(p2[i] @ z1[i].detach() / (p2[i].norm() * z1[i].detach().norm()))
        assert float(per_pair[i]) == pytest.approx(-(c1 + c2) / 2, abs=1e-6)
    assert not per_pair.requires_grad  # p's are constants here; z's only reach the loss through stop-grad


def test_whitening_gives_identity_covariance():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 4, generator=g) @ torch.randn(4, 4, generator=g) + 3.0
    w = whiten(x)
    cov = (w - w.mean(0)).T @ (w - w.mean(0)) / (w.shape[0] - 1)
    torch.testing.assert_close(cov, torch.eye(4), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(w.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="more samples"):
        whiten(torch.randn(4, 8))


def test_wmse_per_pair_uses_whitened_cosine_and_checks_batch():
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(32, 3, generator=g), torch.randn(32, 3, generator=g)
    per_pair = wmse_per_pair(z1, z2, whitening_size=32)
    expected = 2 - 2 * F.cosine_similarity(whiten(z1), whiten(z2), dim=1)
    torch.testing.assert_close(per_pair, expected, atol=1e-5, rtol=1e-5)
    # identical views give zero loss; a batch not divisible by the whitening size is refused
    assert wmse_per_pair(z1, z1.clone(), whitening_size=16).abs().max() < 1e-5
    with pytest.raises(ValueError, match="divisible"):
        wmse_per_pair(z1[:30], z2[:30], whitening_size=16)
    # the simplified (stop-grad) form has no gradient through the second view
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    wmse_per_pair(a, b, whitening_size=32, stopgrad=True).mean().backward()
    assert b.grad is None and a.grad is not None


def test_vicreg_terms_match_loops():
    g = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g) * 0.3
    inv = vicreg_invariance_per_pair(z1, z2)
    torch.testing.assert_close(inv.mean(), F.mse_loss(z1, z2))
    var_expected = sum(max(0.0, 1 - math.sqrt(float(z2[:, d].var()) + 1e-4)) for d in range(4)) / 4
    assert float(vicreg_variance(z2)) == pytest.approx(var_expected, rel=1e-5)
    zc = z1 - z1.mean(0)
    cov = [[float(zc[:, a] @ zc[:, b]) / 9 for b in range(4)] for a in range(4)]
    cov_expected = sum(cov[a][b] ** 2 for a in range(4) for b in range(4) if a != b) / 4
    assert float(vicreg_covariance(z1)) == pytest.approx(cov_expected, rel=1e-5)


def test_warmup_cosine_schedule():
    assert warmup_cosine_factor(0, 10, 110) == 0.0
    assert warmup_cosine_factor(5, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine_factor(10, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine_factor(60, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine_factor(110, 10, 110, min_factor=0.1) == pytest.approx(0.1)
