"""Resuming from a checkpoint written mid-epoch ends with exactly the weights of an uninterrupted run."""

import lightning as L
import pytest
import torch

from callbacks import SWAD
from datamodules import RotatedDigitsDataModule
from lightning_modules import ImageClassifier


class Interrupt(Exception):
    pass


class SaveAndDie(L.Callback):
    """Write a checkpoint after optimizer step `step` (mid-epoch), then stop the process's training."""

    def __init__(self, step: int, path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise Interrupt


def run(tmp_path, callbacks, ckpt_path=None):
    L.seed_everything(0)
    dm = RotatedDigitsDataModule(test_envs=[0], batch_size=8, steps_per_epoch=10, eval_batch_size=256)
    model = ImageClassifier(
        backbone="small_cnn",
        num_classes=dm.num_classes,
        input_shape=dm.input_shape,
        domain_names=dm.domain_names,
        lr=1e-3,
    )
    swad = SWAD(n_converge=1, n_tolerance=100, tolerance_ratio=10.0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=40,
        callbacks=[swad, *callbacks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model, swad


def test_resume_mid_epoch_is_bit_for_bit(tmp_path):
    reference, ref_swad = run(tmp_path / "a", [])
    ckpt = tmp_path / "mid.ckpt"
    with pytest.raises(Interrupt):
        run(tmp_path / "b", [SaveAndDie(25, ckpt)])  # step 25: half-way through the third epoch
    resumed, swad = run(tmp_path / "b", [], ckpt_path=ckpt)
    assert swad.n_averaged == ref_swad.n_averaged == 40
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the SWAD average
    live_ref = ref_swad.weight_variants(reference)["last"]
    live = swad.weight_variants(resumed)["last"]
    assert all(torch.equal(live_ref[k], live[k]) for k in live_ref)
