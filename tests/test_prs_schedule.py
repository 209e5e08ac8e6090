"""ReparameterizationSchedule: switch epochs per layer, switching during fit on two modules, resume after a switch."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.reparam import ReparameterizationSchedule, reparam_layers, switch_epochs
from datamodules.prs import DigitsClassificationDataModule
from lightning_modules import ImageClassifier
from lightning_modules.prs.module import PRSClassifier


def test_prs_switches_deeper_layers_earlier_linearly():
    epochs = switch_epochs(4, 30, "prs")  # defaults: start 0.2 E = 6, end 0.8 E = 24
    assert epochs == [24, 18, 12, 6]
    assert switch_epochs(5, 100, "prs", start=10, end=50) == [50, 40, 30, 20, 10]
    assert switch_epochs(4, 30, "reverse") == [6, 12, 18, 24]
    assert switch_epochs(3, 30, "oneshot") == [15, 15, 15]
    assert switch_epochs(3, 30, "oneshot", at_epoch=4) == [4, 4, 4]
    assert switch_epochs(3, 30, "start") == [0, 0, 0]
    assert switch_epochs(3, 30, "never") == [None, None, None]
    assert switch_epochs(1, 30, "prs") == [6]
    with pytest.raises(ValueError, match="unknown schedule"):
        switch_epochs(3, 30, "sideways")
    with pytest.raises(ValueError, match="must not exceed"):
        switch_epochs(3, 30, "prs", start=20, end=10)


def tiny_data() -> DigitsClassificationDataModule:
    return DigitsClassificationDataModule(image_size=8, batch_size=16, steps_per_epoch=2, eval_batch_size=128)


def trainer(tmp_path, max_epochs: int, callbacks) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


@pytest.mark.parametrize(
    "make_module",
    [
        # plain foundation classifier: layers found through `is_attention` / `reparameterize` on submodules
        lambda: ImageClassifier(backbone="prs_vit_digits", num_classes=10, input_shape=(1, 8, 8), lr=1e-3),
        # PRS module: layers from its `reparam_layers()`
        lambda: PRSClassifier(
            backbone="prs_vit_digits", num_classes=10, input_shape=(1, 8, 8), warmup_epochs=0
        ),
    ],
)
def test_schedule_switches_layers_during_fit(tmp_path, make_module):
    L.seed_everything(0)
    module = make_module()
    schedule = ReparameterizationSchedule(mode="prs", start=1, end=3, ramp_epochs=1)
    trainer(tmp_path, 4, [schedule]).fit(module, datamodule=tiny_data())
    assert schedule.schedule == [3, 2, 2, 1]
    assert schedule.switched_at == {0: 3, 1: 2, 2: 2, 3: 1}
    assert all(layer.is_attention for layer in reparam_layers(module))
    # last batch: epoch 3.5; ramp of 1 epoch: the first layer (switched at 3) is half-way, the others are done
    assert [float(layer.gate_scale) for layer in reparam_layers(module)] == [0.5, 0.0, 0.0, 0.0]


def test_never_keeps_convolutions_and_missing_layers_fail(tmp_path):
    module = PRSClassifier(backbone="prs_vit_digits", num_classes=10, input_shape=(1, 8, 8), warmup_epochs=0)
    trainer(tmp_path, 1, [ReparameterizationSchedule(mode="never")]).fit(module, datamodule=tiny_data())
    assert not any(layer.is_attention for layer in module.reparam_layers())
    plain = ImageClassifier(backbone="small_cnn", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="no reparameterizable layers"):
        trainer(tmp_path, 1, [ReparameterizationSchedule()]).fit(plain, datamodule=tiny_data())


def test_resume_after_a_switch_restores_attention_and_outputs(tmp_path):
    L.seed_everything(0)
    make = lambda: PRSClassifier(  # noqa: E731
        backbone="prs_vit_digits", num_classes=10, input_shape=(1, 8, 8), warmup_epochs=0
    )
    first = make()
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    schedule = ReparameterizationSchedule(mode="prs", start=1, end=3)
    trainer(tmp_path, 2, [schedule, ckpt_cb]).fit(first, datamodule=tiny_data())
    assert [layer.is_attention for layer in first.reparam_layers()] == [False, False, False, True]
    last = tmp_path / "ckpt" / "last.ckpt"
    x = torch.rand(4, 1, 8, 8)
    first.eval()
    expected = first(x)

    restored = PRSClassifier.load_from_checkpoint(last)  # fresh weights, then the checkpoint's
    restored.eval()
    assert [layer.is_attention for layer in restored.reparam_layers()] == [False, False, False, True]
    torch.testing.assert_close(restored(x), expected, atol=0, rtol=0)

    L.seed_everything(1)
    resumed = make()
    schedule2 = ReparameterizationSchedule(mode="prs", start=1, end=3)
    trainer(tmp_path, 3, [schedule2]).fit(resumed, datamodule=tiny_data(), ckpt_path=last)
    assert schedule2.switched_at == {3: 1, 1: 2, 2: 2}  # epoch-1 switch from the checkpoint, then epoch 2's
    assert [layer.is_attention for layer in resumed.reparam_layers()] == [False, True, True, True]
