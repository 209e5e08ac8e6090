"""ImageClassifier and the backbone factory: NaN losses stop training, offline weights, frozen BatchNorm."""

import huggingface_hub.constants
import pytest
import torch

from lightning_modules import ImageClassifier
from lightning_modules.nets.backbones import build_backbone


def test_nan_loss_is_a_clear_early_error():
    model = ImageClassifier(backbone="small_cnn", num_classes=3, input_shape=(1, 16, 16))
    x = torch.full((4, 1, 16, 16), float("nan"))
    with pytest.raises(FloatingPointError, match="global step 0"):
        model.training_step((x, torch.zeros(4, dtype=torch.long)), 0)


def test_missing_pretrained_weights_say_how_to_get_them(tmp_path, monkeypatch):
    # empty caches: nothing may be downloaded, and the error must name the ways out
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError) as exc:
        build_backbone("resnet18.tv_in1k", pretrained=True)
    message = str(exc.value)
    assert "pretrained_path" in message and "allow_download" in message and "resnet18.tv_in1k" in message


def test_pretrained_weights_from_a_local_file(tmp_path):
    net, _ = build_backbone("resnet18", in_chans=3)
    path = tmp_path / "weights.pth"
    torch.save({k: v + 1.0 if v.is_floating_point() else v for k, v in net.state_dict().items()}, path)
    loaded, _ = build_backbone("resnet18", pretrained=True, pretrained_path=str(path))
    key = "conv1.weight"
    torch.testing.assert_close(loaded.state_dict()[key], net.state_dict()[key] + 1.0)


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet_does_not_exist")


def test_freeze_bn_keeps_batchnorm_in_eval_mode():
    model = ImageClassifier(backbone="resnet18", num_classes=3, input_shape=(3, 32, 32), freeze_bn=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    model.training_step((torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)), 0)
    torch.testing.assert_close(bns[0].running_mean, before)
    unfrozen = ImageClassifier(backbone="resnet18", num_classes=3, input_shape=(3, 32, 32)).train()
    assert all(m.training for m in unfrozen.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_per_domain_metrics_average_over_domains_present():
    model = ImageClassifier(
        backbone="small_cnn", num_classes=2, input_shape=(1, 16, 16), domain_names=["a", "b", "c"]
    )
    losses = torch.tensor([1.0, 3.0, 2.0])
    model.val_metrics.update(losses, torch.tensor([True, False, True]), torch.tensor([0, 0, 2]))
    out = model.val_metrics.compute()
    assert out["present"].tolist() == [True, False, True]
    torch.testing.assert_close(out["loss"][[0, 2]], torch.tensor([2.0, 2.0], dtype=torch.float64))
    torch.testing.assert_close(out["acc"][[0, 2]], torch.tensor([0.5, 1.0], dtype=torch.float64))


def test_nonfinite_loss_can_skip_the_batch():
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    x = torch.randn(12, 1, 16, 16)
    x[4:8] = float("nan")  # the second of three batches
    loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (12,))), batch_size=4)
    model = ImageClassifier(
        backbone="small_cnn", num_classes=3, input_shape=(1, 16, 16), on_nonfinite_loss="skip"
    )
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.warns(RuntimeWarning, match="batch skipped"):
        trainer.fit(model, loader)
    assert model.skipped_batches == 1  # (Lightning still counts the step; the optimizer had no gradients)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(ValueError, match="on_nonfinite_loss"):
        ImageClassifier(
            backbone="small_cnn", num_classes=3, input_shape=(1, 16, 16), on_nonfinite_loss="nope"
        )
