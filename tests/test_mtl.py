"""ANT's multi-task pieces: PCGrad, NashMTL, uncertainty weighting, stratified sampling, per-cluster gradients."""

import numpy as np
import pytest
import torch
from torch import nn

from callbacks.mtl import TimestepMTL
from callbacks.mtl.methods import UncertaintyWeighting, nash_weights, pcgrad, per_task_grads
from callbacks.mtl.reducers import SurgeryReducer, UWReducer
from callbacks.mtl.sampling import StratifiedTimestepSampler, cluster_ids, cluster_means
from lightning_modules.diffusion.module import DiffusionModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_UNET = {"block_out_channels": [16, 32], "norm_num_groups": 8}


def test_pcgrad_projects_only_conflicting_gradients():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # conflicting: g0 . g1 = -1
    out = pcgrad(g, torch.Generator().manual_seed(0))
    g0 = g[0] - (-1.0 / 2.0) * g[1]  # g0 projected off g1: [0.5, 0.5]
    g1 = g[1] - (-1.0 / 1.0) * g[0]  # g1 projected off g0: [0, 1]
    torch.testing.assert_close(out, g0 + g1)
    assert torch.dot(g0, g[1]) == pytest.approx(0.0)
    agree = torch.tensor([[1.0, 0.2], [0.5, 1.0]])  # non-conflicting: plain sum
    torch.testing.assert_close(pcgrad(agree), agree.sum(0))


def test_pcgrad_projects_on_the_original_gradients_in_random_order():
    g = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-1.0, -1.0, 1.0]])
    outs = {tuple(pcgrad(g, torch.Generator().manual_seed(s)).round(decimals=5).tolist()) for s in range(20)}
    assert len(outs) > 1  # the projection order matters and is random
    for out in outs:  # every result is a sum of projected gradients: finite and not the plain sum
        assert np.all(np.isfinite(out)) and out != tuple(g.sum(0).tolist())


def test_nash_weights_on_orthogonal_equal_norm_tasks_are_equal():
    grads = torch.eye(3) * 2.0
    alpha = nash_weights(grads @ grads.T)
    assert np.allclose(alpha, alpha[0], rtol=1e-5)
    m = (grads @ grads.T).double().numpy()
    m /= np.linalg.norm(m)
    np.testing.assert_allclose(m @ alpha, 1.0 / alpha, rtol=1e-4)  # the bargaining condition G G^T a = 1/a


def test_nash_weights_favour_the_smaller_gradient():
    grads = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    alpha = nash_weights(grads @ grads.T)
    m = (grads @ grads.T).double().numpy()
    m /= np.linalg.norm(m)
    np.testing.assert_allclose(m @ alpha, 1.0 / alpha, rtol=1e-4)
    assert alpha[1] > alpha[0]
    assert alpha[0] * 3.0 == pytest.approx(alpha[1] * 1.0, rel=1e-4)  # equal contribution a_i |g_i|


def test_uncertainty_weighting_loss():
    uw = UncertaintyWeighting(3)
    with torch.no_grad():
        uw.log_vars.copy_(torch.tensor([0.0, 1.0, -1.0]))
    losses = torch.tensor([2.0, 3.0, 4.0])
    expected = sum(0.5 * (np.exp(-s) * v + s) for s, v in zip([0.0, 1.0, -1.0], [2.0, 3.0, 4.0], strict=True))
    assert float(uw(losses).detach()) == pytest.approx(expected, rel=1e-6)
    # the optimum of 1/2 (e^-s L + s) is s = log L
    s = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([s], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        (0.5 * (torch.exp(-s) * 3.0 + s)).sum().backward()
        opt.step()
    assert float(s.detach()) == pytest.approx(np.log(3.0), abs=1e-3)


def test_uw_has_its_own_param_group_in_the_module_optimizer():
    module = DiffusionModule(input_shape=(1, 8, 8), unet=TINY_UNET, lr=1e-4, weight_decay=0.01)
    callback = TimestepMTL(method="uw", num_clusters=5)
    callback.setup(None, module, "fit")
    assert isinstance(module.loss_reducer, UWReducer)
    assert "loss_reducer.uw.log_vars" in module.state_dict()
    optimizer = module.configure_optimizers()
    main, uw = optimizer.param_groups
    assert uw["lr"] == 0.025 and uw["weight_decay"] == 0.0
    assert main["lr"] == 1e-4 and main["weight_decay"] == 0.01
    assert [id(p) for p in uw["params"]] == [id(module.loss_reducer.uw.log_vars)]
    assert not {id(p) for p in main["params"]} & {id(p) for p in uw["params"]}
    assert module.automatic_optimization
    surgery = DiffusionModule(input_shape=(1, 8, 8), unet=TINY_UNET)
    TimestepMTL(method="pcgrad").setup(None, surgery, "fit")
    assert not surgery.automatic_optimization and isinstance(surgery.loss_reducer, SurgeryReducer)


def test_stratified_sampler_gives_each_cluster_its_share():
    bounds = [0, 3, 10, 400, 401, 1000]
    sampler = StratifiedTimestepSampler(bounds, torch.Generator().manual_seed(0))
    t = sampler(50)
    ids = cluster_ids(t, bounds)
    assert torch.equal(ids, torch.arange(5).repeat_interleave(10))  # cluster-major, 10 each
    for i in range(5):
        part = t[ids == i]
        assert part.min() >= bounds[i] and part.max() < bounds[i + 1]
    assert set(sampler(1000)[200:400].tolist()) == set(range(3, 10))  # the whole interval is reachable
    assert set(sampler(1000)[600:800].tolist()) == {400}
    with pytest.raises(ValueError, match="divisible"):
        sampler(12)


def test_cluster_means_use_membership_not_position():
    losses = torch.tensor([1.0, 2.0, 3.0, 5.0])
    ids = cluster_ids(torch.tensor([900, 10, 950, 20]), [0, 500, 1000])
    means, counts = cluster_means(losses, ids, 2)
    torch.testing.assert_close(means, torch.tensor([3.5, 2.0]))
    torch.testing.assert_close(counts, torch.tensor([2.0, 2.0]))


def _cluster_setup():
    torch.manual_seed(0)
    module = DiffusionModule(input_shape=(1, 8, 8), unet=TINY_UNET)
    bounds = [0, 200, 400, 600, 800, 1000]
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    t = StratifiedTimestepSampler(bounds, torch.Generator().manual_seed(1))(10)
    noise = torch.randn_like(x)
    params = list(module.net.parameters())
    return module, bounds, x, t, noise, params


def test_per_cluster_gradients_batched_loop_and_subbatch_agree():
    module, bounds, x, t, noise, params = _cluster_setup()

    def loss_fn(index):
        return module.per_sample_losses(x[index], t[index], noise[index])

    results = {}
    for mode in ("batched", "loop", "subbatch"):
        reducer = SurgeryReducer(bounds, "pcgrad", grad_mode=mode)
        results[mode] = reducer.cluster_grads(loss_fn, t, params)
    for mode in ("loop", "subbatch"):
        torch.testing.assert_close(results[mode][0], results["batched"][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(results[mode][1], results["batched"][1], atol=1e-6, rtol=1e-5)
    # each row is the gradient of that cluster's mean loss only
    ids = cluster_ids(t, bounds)
    one = module.per_sample_losses(x, t, noise)[ids == 2].mean()
    direct = torch.cat([g.flatten() for g in torch.autograd.grad(one, params)])
    torch.testing.assert_close(results["batched"][0][2], direct, atol=1e-5, rtol=1e-4)


def test_per_task_grads_zero_for_unreached_parameters():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    losses = torch.stack([(2 * a).sum(), (a * a).sum()])
    g = per_task_grads(losses, [a, b], batched=False)
    torch.testing.assert_close(g, torch.tensor([[2.0, 2.0, 0, 0, 0], [2.0, 2.0, 0, 0, 0]]))


def test_nash_between_solves_uses_one_weighted_backward_equal_to_combining_cluster_grads():
    module, bounds, x, t, noise, params = _cluster_setup()

    def loss_fn(index):
        return module.per_sample_losses(x[index], t[index], noise[index])

    reducer = SurgeryReducer(bounds, "nash", nash_update_every=25)
    assert not reducer.reuses_nash_weights(3)  # no weights solved yet
    grads, _, _ = reducer.cluster_grads(loss_fn, t, params)
    reducer.combine(grads, step=0)  # solves alpha
    assert reducer.reuses_nash_weights(3) and not reducer.reuses_nash_weights(25)
    assert not np.allclose(
        reducer.alpha, reducer.alpha[0]
    )  # unequal weights, so the check below is not trivial
    expected, _ = reducer.combine(grads, step=3)  # same alpha, combined from the k cluster gradients
    flat, losses, cluster = reducer.weighted_grad(loss_fn, t, params)
    torch.testing.assert_close(flat, expected, atol=1e-6, rtol=1e-4)
    assert losses.shape == t.shape and cluster.shape == (5,)


def test_boundaries_split_a_timestep_range_when_the_module_gives_one():
    from callbacks.mtl.callback import TimestepMTL

    assert TimestepMTL(num_clusters=2).compute_boundaries(1000, timestep_range=(500, 750)) == [500, 625, 750]
    t = TimestepMTL(num_clusters=2, clustering="timestep").compute_boundaries(1000, timestep_range=(100, 200))
    assert t[0] == 100 and t[-1] == 200 and 100 < t[1] < 200
    fixed = TimestepMTL(boundaries=[500, 600, 750])
    assert fixed.compute_boundaries(1000, timestep_range=(500, 750)) == [500, 600, 750]
    with pytest.raises(ValueError, match="from 500 to 750"):
        TimestepMTL(boundaries=[0, 600, 1000]).compute_boundaries(1000, timestep_range=(500, 750))
    with pytest.raises(ValueError, match="timestep_range"):
        TimestepMTL().compute_boundaries(1000, timestep_range=(750, 500))
