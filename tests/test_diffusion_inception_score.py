"""`DiffusionModule.test` reports the Inception Score of its samples: the formula, the settings, the checkpoints."""

import lightning as L
import pytest
import torch
from torch import nn

from datamodules.images import DigitsDataModule
from lightning_modules.diffusion.fid import build_fid
from lightning_modules.diffusion.inception_score import build_inception_score
from lightning_modules.diffusion.module import DiffusionModule
from lightning_modules.diffusion.sampling import to_uint8

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = {"block_out_channels": [16, 32], "norm_num_groups": 8}


class TinyLogits(nn.Module):
    """Random 4-class logits of the uint8 image (8x8); ``num_features`` lets it serve FID as well."""

    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.proj = nn.Linear(64, 4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().mean(1, keepdim=True) / 255
        return 50 * self.proj(nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))


def test_module_test_reports_the_inception_score_of_its_samples(monkeypatch):
    logits = TinyLogits()
    monkeypatch.setattr(
        "lightning_modules.diffusion.module.build_fid", lambda feature, path: build_fid(logits)
    )
    monkeypatch.setattr(
        "lightning_modules.diffusion.module.build_inception_score",
        lambda feature, path, splits: build_inception_score(logits, splits=splits),
    )
    module = DiffusionModule(
        input_shape=(1, 8, 8),
        unet=SMALL,
        fid_feature="classifier",
        fid_num_samples=12,
        fid_batch_size=6,
        sample_steps=2,
        inception_score=True,
        is_splits=1,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=1,
    )
    metrics = trainer.test(module, datamodule=DigitsDataModule(eval_batch_size=20), verbose=False)[0]
    with torch.no_grad():
        p = logits(to_uint8(module.generate(list(range(12))))).softmax(dim=1)
    expected = torch.exp((p * (p.log() - p.mean(0, keepdim=True).log())).sum(1).mean())
    assert float(expected) > 1.05  # the samples are not all one class: the check below has something to match
    assert metrics["test/is"] == pytest.approx(float(expected), rel=1e-4)
    assert "test/is_std" not in metrics  # one split: no spread
    checkpoint = {"state_dict": module.state_dict()}
    assert any(k.startswith("inception_score.") for k in checkpoint["state_dict"])
    module.on_save_checkpoint(checkpoint)  # the scoring network is read from its own file, never saved
    assert not any(k.startswith(("inception_score.", "fid.")) for k in checkpoint["state_dict"])


def test_inception_score_needs_a_scoring_network():
    with pytest.raises(ValueError, match="inception_score needs fid_feature"):
        DiffusionModule(input_shape=(1, 8, 8), unet=SMALL, inception_score=True)
    module = DiffusionModule(
        input_shape=(1, 8, 8),
        unet=SMALL,
        fid_feature="inception",
        inception_score=True,
        fid_weights_path=None,
    )
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        module.setup("test")
