"""FID: pluggable extractors through torchmetrics, the digits classifier's features, clear errors, no download."""

import lightning as L
import pytest
import torch
from torch import nn

from datamodules.images import DigitsDataModule
from lightning_modules.classifier import ImageClassifier
from lightning_modules.diffusion.fid import ClassifierFeatures, build_fid
from lightning_modules.diffusion.module import DiffusionModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TinyFeatures(nn.Module):
    """A random linear map of the (resized) uint8 image: enough to tell distributions apart."""

    num_features = 6

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().mean(1, keepdim=True) / 255
        return self.proj(nn.functional.adaptive_avg_pool2d(x, 8).flatten(1))


def test_fid_is_zero_for_identical_sets_and_grows_with_a_shift():
    torch.manual_seed(0)
    extractor = TinyFeatures()
    real = torch.randint(0, 200, (300, 1, 8, 8), dtype=torch.uint8)

    def fid_against_real(fake):
        fid = build_fid(extractor)
        fid.update(real, real=True)
        fid.update(fake, real=False)
        return float(fid.compute())

    assert fid_against_real(real) == pytest.approx(0.0, abs=1e-4)
    big = fid_against_real((real.int() + 50).clamp(max=255).to(torch.uint8))
    small = fid_against_real((real.int() + 10).clamp(max=255).to(torch.uint8))
    assert big > small > 1e-3


def test_missing_weights_give_clear_errors_and_no_download(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
        build_fid("inception", None)
    with pytest.raises(FileNotFoundError, match="Inception weights file"):
        build_fid("inception", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="configs/fid/digits_classifier.yaml"):
        build_fid("classifier", str(tmp_path / "missing.ckpt"))
    module = DiffusionModule(
        input_shape=(1, 8, 8), fid_feature="inception", fid_weights_path=None
    )  # fit: fine
    with pytest.raises(FileNotFoundError, match="Inception weights file"):
        module.setup("test")  # testing needs the weights
    with pytest.raises(ValueError, match="fid_feature"):
        DiffusionModule(input_shape=(1, 8, 8), fid_feature="clip")


def test_classifier_features_from_an_image_classifier_checkpoint(tmp_path):
    torch.manual_seed(0)
    clf = ImageClassifier(backbone="small_cnn", num_classes=10, input_shape=(1, 8, 8))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(clf, datamodule=DigitsDataModule(batch_size=10))
    path = tmp_path / "clf.ckpt"
    trainer.save_checkpoint(path)
    features = ClassifierFeatures.from_checkpoint(str(path))
    assert features.num_features == 256 and (features.in_chans, features.image_size) == (1, 8)
    digits = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    expected = clf.backbone.eval()(digits.float() / 127.5 - 1)
    torch.testing.assert_close(features(digits), expected)
    # RGB and larger inputs (the metric's probe, or generated faces) are converted, not rejected
    assert features(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 256)
    fid = build_fid("classifier", str(path))
    fid.update(digits, real=True)


def test_module_test_step_reports_fid_with_a_tiny_extractor(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "lightning_modules.diffusion.module.build_fid", lambda feature, path: build_fid(TinyFeatures())
    )
    module = DiffusionModule(
        input_shape=(1, 8, 8),
        unet={"block_out_channels": [16, 32], "norm_num_groups": 8},
        fid_feature="classifier",
        fid_num_samples=20,
        fid_batch_size=10,
        sample_steps=3,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=1,
    )
    metrics = trainer.test(module, datamodule=DigitsDataModule(eval_batch_size=40), verbose=False)[0]
    assert metrics["test/fid"] > 0 and metrics["test/fid_num_samples"] == 20
    assert {f"test/loss_t{lo:04d}-{lo + 200:04d}" for lo in range(0, 1000, 200)} <= set(metrics)


def test_weights_saved_before_the_fid_extractor_exists_load_after_it_does(monkeypatch):
    """`--test_after_fit` captures the weights during fit (no FID yet) and reloads them after `test` built it."""
    monkeypatch.setattr(
        "lightning_modules.diffusion.module.build_fid", lambda feature, path: build_fid(TinyFeatures())
    )
    module = DiffusionModule(
        input_shape=(1, 8, 8),
        unet={"block_out_channels": [16, 32], "norm_num_groups": 8},
        fid_feature="classifier",
    )
    before = {k: v.clone() for k, v in module.state_dict().items()}
    assert not any(k.startswith("fid.") for k in before)
    module.setup("test")
    assert any(k.startswith("fid.") for k in module.state_dict())
    module.load_state_dict(before)  # strict: the FID extractor keeps its own weights
    fresh = DiffusionModule(
        input_shape=(1, 8, 8), unet={"block_out_channels": [16, 32], "norm_num_groups": 8}
    )
    fresh.load_state_dict(module.state_dict())  # and extra FID keys are ignored by a module without FID
