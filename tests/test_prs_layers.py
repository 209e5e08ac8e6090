"""ReparamAttention: the attention form reproduces the convolution at the switch, and learns after it."""

import pytest
import timm
import torch
from torch import nn

from lightning_modules.prs.layers import ReparamAttention, shift_attention


def tokens(image: torch.Tensor) -> torch.Tensor:
    return image.flatten(2).transpose(1, 2)


@pytest.mark.parametrize(
    ("kernel", "c_in", "c_out", "height", "width"),
    [(1, 4, 6, 5, 7), (3, 8, 8, 6, 6), (3, 5, 12, 4, 9), (5, 6, 4, 7, 5), (5, 3, 3, 2, 3), (7, 4, 5, 8, 8)],
)
def test_switch_reproduces_a_reference_conv(kernel, c_in, c_out, height, width):
    """Factorise an independent nn.Conv2d (zero padding, stride 1) into the layer: both forms equal the conv."""
    torch.manual_seed(kernel * 100 + c_in)
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
    layer = ReparamAttention(c_in, c_out, kernel_size=kernel, head_dim=min(c_in, c_out))
    layer.load_conv(conv.weight, conv.bias)
    x = torch.randn(3, c_in, height, width)
    expected = tokens(conv(x))
    with torch.no_grad():
        as_conv = layer(tokens(x), (height, width))
        layer.reparameterize()
        assert layer.is_attention
        as_attention = layer(tokens(x), (height, width))
    torch.testing.assert_close(as_conv, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(as_attention, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("kernel", "dim", "head_dim"), [(3, 36, 4), (3, 16, 2), (5, 10, 1)])
def test_switch_is_exact_for_low_rank_layers(kernel, dim, head_dim):
    """A randomly initialised layer (kernel slices of rank head_dim) keeps its output at the switch."""
    torch.manual_seed(0)
    layer = ReparamAttention(dim, kernel_size=kernel, head_dim=head_dim)
    x = torch.randn(2, 6 * 7, dim)
    before = layer(x, (6, 7))
    layer.reparameterize()
    torch.testing.assert_close(layer(x, (6, 7)), before, atol=1e-5, rtol=1e-5)


def test_shift_attention_is_zero_padding():
    """Each row holds one 1 at pos(i) + Delta_h, or none when that position is off the image."""
    p = shift_attention(3, 4, 3)
    assert p.shape == (9, 12, 12)
    assert p[4].equal(torch.eye(12))  # centre offset (0, 0)
    assert p[0, 0].sum() == 0  # top-left token, offset (-1, -1): off the image
    assert p[8, 0, 5] == 1  # offset (+1, +1) of token (0, 0) is token (1, 1) = 1 * 4 + 1


def test_content_attention_learns_only_after_the_switch():
    torch.manual_seed(0)
    layer = ReparamAttention(8, kernel_size=3, head_dim=2)
    x = torch.randn(2, 25, 8)
    layer(x, (5, 5)).square().sum().backward()
    assert layer.qk.weight.grad is None and layer.gate.grad is None  # unused: the optimizer skips them
    assert layer.value.weight.grad is not None
    layer.zero_grad(set_to_none=True)
    layer.reparameterize()
    layer(x, (5, 5)).square().sum().backward()
    assert layer.gate.grad.abs().sum() > 0  # the gate moves away from the convolution
    with torch.no_grad():
        before = layer(x, (5, 5))
        layer.gate.fill_(0.5)  # half content attention: the function changes
        assert (layer(x, (5, 5)) - before).abs().max() > 1e-3


def test_anneal_fades_the_convolution_out_exactly_from_the_switch():
    torch.manual_seed(0)
    layer = ReparamAttention(12, kernel_size=3, head_dim=3)
    x = torch.randn(2, 30, 12)
    with torch.no_grad():
        conv = layer(x, (5, 6))
        layer.reparameterize()
        layer.anneal(0.0)
        torch.testing.assert_close(layer(x, (5, 6)), conv, atol=1e-5, rtol=1e-5)
        layer.anneal(1.0)  # pure self-attention: only the softmax branch is left
        attn = layer.attention_maps(x, 5, 6)
        assert torch.allclose(attn.sum(-1), torch.ones(()))  # softmax rows, no hard shift left
        assert (layer(x, (5, 6)) - conv).abs().max() > 1e-2
        layer.anneal(7.0)  # clipped
        assert float(layer.gate_scale) == 0.0


def test_form_is_in_the_state_dict():
    layer = ReparamAttention(8, kernel_size=3)
    layer.reparameterize()
    layer.anneal(0.25)
    fresh = ReparamAttention(8, kernel_size=3)
    assert not fresh.is_attention
    fresh.load_state_dict(layer.state_dict())
    assert fresh.is_attention and float(fresh.gate_scale) == 0.75


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="odd"):
        ReparamAttention(8, kernel_size=2)
    with pytest.raises(ValueError, match="switch_gate"):
        ReparamAttention(8, switch_gate=1.5)
    layer = ReparamAttention(8)
    with pytest.raises(ValueError, match="expected tokens"):
        layer(torch.randn(1, 10, 8), (3, 3))
    with pytest.raises(ValueError, match="conv weight"):
        layer.load_conv(torch.randn(8, 8, 5, 5))


@pytest.mark.parametrize("name", ["prs_vit_digits", "prs_vit_tiny"])
def test_hybrid_backbone_is_unchanged_by_switching_every_layer(name):
    torch.manual_seed(0)
    net = timm.create_model(name, num_classes=0, in_chans=3)
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before = net(x)
        for layer in net.reparam_layers():
            layer.reparameterize()
        after = net(x)
    assert all(layer.is_attention for layer in net.reparam_layers())
    assert after.shape == (2, net.num_features)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model(name, pretrained=True)
