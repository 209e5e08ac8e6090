"""Fourier feature-map analysis: low-pass signals score below white noise; every layer of a model is analysed."""

import math

import torch

from lightning_modules.prs.nets import HybridViT
from scripts.fourier_analysis import analyse, relative_log_amplitude


def test_low_frequency_input_scores_below_white_noise():
    torch.manual_seed(0)
    size = 16
    # low-pass random field: white noise blurred by a Gaussian (sigma 2 px) in the frequency domain
    freq = torch.fft.fftfreq(size)
    gain = torch.exp(-2 * (math.pi * 2.0) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    smooth = torch.fft.ifft2(torch.fft.fft2(torch.randn(8, 4, size, size)) * gain).real
    noise = torch.randn(8, 4, size, size)
    freqs, low = relative_log_amplitude(smooth)
    _, white = relative_log_amplitude(noise)
    assert freqs[0] == 0 and freqs[-1] == 1 and len(freqs) == size // 2 + 1
    assert low[0] == 0 and white[0] == 0
    assert low[-1] < white[-1] - 2.0  # the smooth input has far less high-frequency energy
    assert abs(float(white[-1])) < 1.0  # white noise: a flat spectrum


def test_analyse_covers_stem_and_every_block():
    net = HybridViT(in_chans=1, dim=18, depth=4, head_dim=2)
    rows = analyse(net, torch.rand(4, 1, 16, 16))
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    assert layers == ["stem", "block1", "block2", "block3", "block4"]
    assert len(rows) == 5 * 4  # 8x8 tokens: frequencies pi/4 .. pi
    assert all(math.isfinite(r["delta_log_amplitude"]) for r in rows)
