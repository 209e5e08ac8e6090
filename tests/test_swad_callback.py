"""SWAD/SWA callback: exact averages over the chosen window, early stop, checkpoints, test on averaged weights."""

import lightning as L
import pytest
import torch

from callbacks import SWAD
from tests.toy import RecordIterates, ScriptedLossModule, toy_loaders

F = 5  # steps per epoch = validation interval


def fit(val_losses, max_steps, tmp_path, swad=None, ckpt_path=None, **trainer_kw):
    L.seed_everything(0)
    module = ScriptedLossModule(val_losses)
    swad = swad or SWAD()
    rec = RecordIterates()
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_steps=max_steps,
        callbacks=[swad, rec, ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        default_root_dir=tmp_path,
        **trainer_kw,
    )
    train, val = toy_loaders(F)
    trainer.fit(module, train, val, ckpt_path=ckpt_path)
    return trainer, module, swad, rec


def params_of(module):
    return [p.detach().cpu().double() for p in module.parameters()]


def assert_same(a, b, tol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.double(), y.double(), atol=tol, rtol=0)


def test_average_is_mean_of_iterates_in_window_and_stops_early(tmp_path):
    # segment k = steps (kF, (k+1)F]; same script as test_loss_valley: window 3..7, dead at 13
    losses = [5, 4, 3, 2.0, 2.1, 2.2, 2.0, 2.5, 3.0, 9, 9, 9, 9, 9, 9, 9, 9]
    trainer, module, swad, rec = fit(losses, max_steps=F * 20, tmp_path=tmp_path)
    assert trainer.global_step == 14 * F  # stopped at the 14th validation, not at max_steps
    assert swad.valley.accepted == [3, 4, 5, 6, 7]
    assert swad.n_averaged == 5 * F
    expected = rec.mean(3 * F + 1, 8 * F)  # iterates after steps 16..40
    assert_same(params_of(module), expected)  # the module holds the average after fit
    last = rec.iterates[trainer.global_step]
    variants = swad.weight_variants(module)
    live = [variants["last"][n] for n, _ in module.named_parameters()]
    assert_same(live, last)


def test_no_valley_keeps_last_weights(tmp_path):
    losses = [10 - i for i in range(10)]
    trainer, module, swad, rec = fit(losses, max_steps=F * 6, tmp_path=tmp_path)
    assert not swad.valley.converged and swad.n_averaged == 0
    assert_same(params_of(module), rec.iterates[trainer.global_step])


def test_constant_model_averages_to_itself(tmp_path):
    losses = [1.0] * 8
    swad = SWAD()
    L.seed_everything(0)
    module = ScriptedLossModule(losses, lr=0.0)
    before = params_of(module)
    train, val = toy_loaders(F)
    L.Trainer(
        max_steps=F * 8,
        callbacks=[swad],
        logger=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
    ).fit(module, train, val)
    assert swad.n_averaged > 0
    assert_same(params_of(module), before, tol=0)


def test_checkpoint_holds_averaged_weights_and_test_uses_them(tmp_path):
    losses = [3, 2, 1.0, 1.1, 1.2, 1.0, 1.1, 1.0]
    trainer, module, swad, rec = fit(losses, max_steps=F * 8, tmp_path=tmp_path)
    averaged = params_of(module)
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    names = [n for n, _ in module.named_parameters()]
    assert_same([ckpt["state_dict"][n] for n in names], averaged)
    live = rec.iterates[trainer.global_step]
    assert_same([ckpt["swad_live_state_dict"][n] for n in names], live)
    # a fresh module tested from the checkpoint (with SWAD configured, as `cli.py test` would) sees the average
    fresh = ScriptedLossModule(losses)
    tester = L.Trainer(callbacks=[SWAD()], logger=False, enable_progress_bar=False)
    _, val = toy_loaders(F)
    tester.test(fresh, val, ckpt_path=tmp_path / "ckpt" / "last.ckpt", verbose=False)
    assert_same(params_of(fresh), averaged)


def test_resume_from_checkpoint_gives_same_average(tmp_path):
    losses = [5, 4, 3, 2.0, 2.1, 2.2, 2.0, 2.5, 1.9, 2.0, 2.1, 2.2]
    _, full, _, _ = fit(losses, max_steps=F * 12, tmp_path=tmp_path / "a")
    fit(losses, max_steps=F * 6, tmp_path=tmp_path / "b")
    _, resumed, swad, _ = fit(
        losses, max_steps=F * 12, tmp_path=tmp_path / "b", ckpt_path=tmp_path / "b" / "ckpt" / "last.ckpt"
    )
    assert swad.n_averaged > 0
    assert_same(params_of(resumed), params_of(full), tol=1e-7)


def test_swa_mode_averages_uniformly_from_start_step(tmp_path):
    trainer, module, swad, rec = fit(
        [1.0] * 10, max_steps=F * 6, tmp_path=tmp_path, swad=SWAD(mode="swa", swa_start_step=12)
    )
    assert swad.n_averaged == 6 * F - 12
    assert_same(params_of(module), rec.mean(13, 6 * F))


def test_missing_monitor_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="val/nope"):
        fit([1.0] * 4, max_steps=F * 2, tmp_path=tmp_path, swad=SWAD(monitor="val/nope"))


def test_gradient_accumulation_averages_optimizer_steps_only(tmp_path):
    losses = [1.0] * 6
    trainer, module, swad, rec = fit(losses, max_steps=6, tmp_path=tmp_path, accumulate_grad_batches=5)
    # 5 batches per epoch, one optimizer step per epoch: one iterate per segment
    assert swad.n_averaged == sum(1 for _ in swad.valley.accepted)
