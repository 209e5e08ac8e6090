"""Backbone export: a DenseCLModule checkpoint's query backbone loads into torchvision's ResNet."""

import sys

import pytest
import torch
import torchvision

from lightning_modules.houghcl.module import DenseCLModule
from scripts.houghcl_export_backbone import backbone_state_dict
from scripts.houghcl_export_backbone import main as export_main


def test_export_loads_into_torchvision_resnet(tmp_path, monkeypatch):
    module = DenseCLModule(
        backbone="resnet18", input_shape=(3, 32, 32), proj_hidden_dim=32, proj_output_dim=8, queue_size=8
    )
    with torch.no_grad():
        module.backbone.conv1.weight.add_(1.0)  # query and key encoders now differ
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict()}, ckpt)
    out = tmp_path / "resnet18.pth"
    monkeypatch.setattr(sys, "argv", ["houghcl_export_backbone.py", str(ckpt), str(out)])
    export_main()
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(torch.load(out), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    x = torch.rand(2, 3, 32, 32)
    net.eval(), module.eval()
    net.fc = torch.nn.Identity()
    torch.testing.assert_close(net(x), module.backbone(x))
    key = backbone_state_dict(ckpt, key_encoder=True)
    assert not torch.equal(key["conv1.weight"], module.backbone.conv1.weight)
    with pytest.raises(ValueError, match="not a Lightning checkpoint"):
        torch.save({"weights": 1}, tmp_path / "bad.ckpt")
        backbone_state_dict(tmp_path / "bad.ckpt")
