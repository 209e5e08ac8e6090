"""Fourier analysis of feature maps (the "How Do Vision Transformers Work?" protocol): per layer, the relative log
amplitude of the feature maps' spectrum, high minus low frequency, from one or more checkpoints.

    python scripts/fourier_analysis.py -c configs/prs/digits.yaml --ckpt logs/prs_digits/version_0/checkpoints/last.ckpt
    python scripts/fourier_analysis.py -c configs/prs/digits.yaml --ckpt a.ckpt b.ckpt --label prs conv \
        --out docs/results/prs/fourier
    (any other `--key=value` is passed to the CLI, e.g. `--data.init_args.image_size=8`)

The config builds the model and datamodule exactly as the CLI does (`LitCLI(run=False)`); each checkpoint's
`state_dict` is then loaded (it carries each layer's conv/attention form). The first `--num_images` test images
(a fixed batch, the same for every checkpoint) go through `feature_maps(x)`, the contract the module (or its
`backbone`) exposes: an ordered `{layer name: (B, C, H, W)}`; tokens models drop any CLS token themselves.

Per layer: |FFT2| of each map, fftshift, log, mean over images and channels, read along the half-diagonal from
frequency 0 to pi, minus the value at 0. Written: `<out>.csv` (label, layer, depth, frequency/pi, delta log
amplitude) and `<out>.png` (delta log amplitude at pi against depth, one line per checkpoint; and the full curves
of each layer for the first checkpoint). High values: the layer keeps high frequencies (conv-like, high-pass);
low values: it attenuates them (attention-like, low-pass).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python scripts/fourier_analysis.py` from anywhere
    sys.path.insert(0, str(ROOT))


def relative_log_amplitude(feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequencies / pi, delta log amplitude) along the half-diagonal of a (B, C, H, W) map's mean log spectrum."""
    if feature_map.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(feature_map.shape)}")
    spectrum = torch.fft.fftshift(torch.fft.fft2(feature_map.double()), dim=(-2, -1))
    log_amp = torch.log(spectrum.abs() + 1e-12).mean(dim=(0, 1))  # (H, W)
    h, w = log_amp.shape
    steps = min(h, w) // 2
    t = torch.arange(steps + 1)
    diagonal = log_amp[(h // 2 + t) % h, (w // 2 + t) % w]  # the last index wraps to -pi == pi
    return t.double() / max(steps, 1), diagonal - diagonal[0]


def feature_maps(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's per-layer maps through the `feature_maps(x)` contract (on the module or its `backbone`)."""
    for owner in (model, getattr(model, "backbone", None)):
        fn = getattr(owner, "feature_maps", None)
        if callable(fn):
            return fn(x)
    raise TypeError(
        f"{type(model).__name__} has no feature_maps(x) (nor has its backbone): nothing to analyse"
    )


def analyse(model: torch.nn.Module, images: torch.Tensor) -> list[dict]:
    """Rows (layer, depth, freq, delta) of every layer, frequency 0 excluded."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        maps = feature_maps(model, images)
    model.train(was_training)
    rows = []
    for depth, (name, fmap) in enumerate(maps.items()):
        freqs, delta = relative_log_amplitude(fmap)
        for f, d in zip(freqs[1:].tolist(), delta[1:].tolist(), strict=True):
            rows.append({"layer": name, "depth": depth, "freq_over_pi": f, "delta_log_amplitude": d})
    return rows


def fixed_batch(datamodule, num_images: int) -> torch.Tensor:
    """The first `num_images` test images, in order (the same batch for every checkpoint)."""
    datamodule.setup("test")
    chunks, count = [], 0
    for batch in datamodule.test_dataloader():
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        chunks.append(x)
        count += len(x)
        if count >= num_images:
            break
    return torch.cat(chunks)[:num_images]


def load_weights(model: torch.nn.Module, ckpt: str) -> None:
    if not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt!r} does not exist")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    if "state_dict" not in state:
        raise ValueError(f"{ckpt!r} is not a Lightning checkpoint (no 'state_dict')")
    model.load_state_dict(state["state_dict"])


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["label", "layer", "depth", "freq_over_pi", "delta_log_amplitude"]
        )
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def plot(rows: list[dict], path: Path) -> None:
    """Delta log amplitude at pi against depth per label, and the first label's full curves per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label in labels:
        at_pi = [r for r in rows if r["label"] == label and r["freq_over_pi"] == 1.0]
        ax1.plot(
            [r["depth"] for r in at_pi], [r["delta_log_amplitude"] for r in at_pi], marker="o", label=label
        )
    ax1.set(xlabel="depth (0 = stem)", ylabel="delta log amplitude at pi", title="high minus low frequency")
    ax1.legend()
    first = [r for r in rows if r["label"] == labels[0]]
    layers = list(dict.fromkeys(r["layer"] for r in first))
    cmap = plt.get_cmap("viridis")
    for i, layer in enumerate(layers):
        pts = [r for r in first if r["layer"] == layer]
        ax2.plot(
            [0.0] + [r["freq_over_pi"] for r in pts],
            [0.0] + [r["delta_log_amplitude"] for r in pts],
            color=cmap(i / max(1, len(layers) - 1)),
            label=layer,
        )
    ax2.set(xlabel="frequency / pi", ylabel="delta log amplitude", title=f"per layer: {labels[0]}")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", action="append", required=True, help="CLI config(s) of the runs")
    parser.add_argument(
        "--ckpt", nargs="+", required=True, help="Lightning checkpoints (same model and data)"
    )
    parser.add_argument("--label", nargs="+", help="one label per checkpoint (default: the file paths)")
    parser.add_argument("--num_images", type=int, default=256, help="size of the fixed test batch")
    parser.add_argument("--out", default="fourier", help="output path without suffix (.csv and .png)")
    parser.add_argument("--no_plot", action="store_true", help="write only the CSV")
    args, overrides = parser.parse_known_args(
        argv
    )  # the rest goes to the CLI, e.g. --data.init_args.image_size=8
    labels = args.label or args.ckpt
    if len(labels) != len(args.ckpt):
        raise SystemExit(f"{len(args.ckpt)} checkpoints but {len(labels)} labels")

    from cli import LitCLI

    cli_args = [arg for cfg in args.config for arg in ("-c", cfg)]
    cli = LitCLI(args=[*cli_args, *overrides, "--trainer.logger=false"], run=False)
    images = fixed_batch(cli.datamodule, args.num_images)
    rows = []
    for ckpt, label in zip(args.ckpt, labels, strict=True):
        load_weights(cli.model, ckpt)
        rows += [{"label": label, **r} for r in analyse(cli.model, images)]
    out = Path(args.out)
    write_csv(rows, out.with_suffix(".csv"))
    if not args.no_plot:
        plot(rows, out.with_suffix(".png"))
    for label in labels:
        at_pi = [
            f"{r['delta_log_amplitude']:.2f}"
            for r in rows
            if r["label"] == label and r["freq_over_pi"] == 1.0
        ]
        print(f"{label}: delta log amplitude at pi per layer (stem first): {', '.join(at_pi)}")
    print(f"wrote {out.with_suffix('.csv')}" + ("" if args.no_plot else f" and {out.with_suffix('.png')}"))
    return rows


if __name__ == "__main__":
    main()
