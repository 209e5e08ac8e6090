"""EMA callback (timm ModelEmaV3) on two different modules: exact EMA, validation swap, end-of-fit variants."""

import lightning as L
import pytest
import torch

from callbacks.ema import EMA
from datamodules.images import DigitsDataModule
from lightning_modules.diffusion.module import DiffusionModule
from tests.toy import RecordIterates, ScriptedLossModule, toy_loaders

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fit(module, callbacks, steps, **loaders):
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **loaders.pop("trainer_args", {}),
    )
    trainer.fit(module, **loaders)
    return trainer


def manual_ema(iterates, decay):
    """timm's ModelEmaV3 with the step given: the first update copies the weights, then constant decay."""
    ema = [p.clone() for p in iterates[0]]
    for params in iterates[1:]:
        ema = [decay * e + (1 - decay) * p for e, p in zip(ema, params, strict=True)]
    return ema


def test_ema_of_the_toy_module_is_exact_and_offered_as_a_variant():
    torch.manual_seed(0)
    module = ScriptedLossModule([1.0])
    initial = [p.detach().clone() for p in module.net.parameters()]
    ema, record = EMA(decay=0.9, attribute="net"), RecordIterates()
    train, val = toy_loaders(5)
    fit(
        module,
        [ema, record],
        5,
        train_dataloaders=train,
        val_dataloaders=val,
        trainer_args={"limit_val_batches": 0},
    )
    iterates = [record.iterates[step] for step in sorted(record.iterates)]
    assert sorted(record.iterates) == [1, 2, 3, 4, 5]
    expected = manual_ema(iterates, 0.9)
    assert not torch.allclose(expected[0], initial[0])
    got = list(module.net.parameters())  # at the end of fit the module holds the EMA weights
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g.detach(), e, atol=1e-6, rtol=1e-6)
    variants = ema.weight_variants(module)
    assert set(variants) == {"last", "ema"}
    last_w = variants["last"]["net.0.weight"]
    torch.testing.assert_close(last_w, iterates[-1][0])


def test_ema_on_the_diffusion_module_validates_with_ema_weights():
    torch.manual_seed(0)
    module = DiffusionModule(
        input_shape=(1, 8, 8), unet={"block_out_channels": [16, 32], "norm_num_groups": 8}, lr=1e-2
    )
    ema = EMA(decay=0.7)
    seen = {}

    class AtValidation(L.Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            seen["val"] = pl_module.net.conv_in.weight.detach().clone()
            seen["ema"] = ema.ema.module.conv_in.weight.detach().clone()

        def on_validation_end(self, trainer, pl_module):  # runs after EMA's swap back (callback order)
            seen["after"] = pl_module.net.conv_in.weight.detach().clone()

    dm = DigitsDataModule(batch_size=10, eval_batch_size=20)
    trainer = fit(
        module,
        [ema, AtValidation()],
        3,
        datamodule=dm,
        trainer_args={"val_check_interval": 3, "check_val_every_n_epoch": None, "limit_val_batches": 1},
    )
    assert trainer.global_step == 3
    # during validation the module held the EMA weights (the EMA copy held the live ones)
    final_ema = module.net.conv_in.weight.detach()
    torch.testing.assert_close(seen["val"], final_ema)
    assert not torch.allclose(seen["ema"], seen["val"])
    torch.testing.assert_close(seen["after"], seen["ema"])


def test_ema_needs_the_named_submodule():
    ema = EMA(attribute="missing")
    with pytest.raises(AttributeError, match="'missing'"):
        ema.setup(None, ScriptedLossModule([1.0]), "fit")
