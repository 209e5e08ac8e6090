"""Export the query backbone of a DenseCL/HoughCL checkpoint as a plain ResNet state dict.

    python scripts/houghcl_export_backbone.py CKPT OUT.pth [--key-encoder]

timm's ResNets use torchvision's parameter names (conv1, bn1, layer1..4, fc), so the written state dict loads into
`torchvision.models.resnet50()` with `load_state_dict(sd, strict=False)` (only `fc` is missing) and into
`timm.create_model("resnet50", num_classes=0)` strictly. The file is written to a temporary name and renamed, so
it is never half-written.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch


def backbone_state_dict(checkpoint: str | Path, key_encoder: bool = False) -> dict[str, torch.Tensor]:
    """The `backbone.*` (or `momentum_backbone.*`) tensors of a Lightning checkpoint, prefix removed."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" not in state:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    prefix = "momentum_backbone." if key_encoder else "backbone."
    out = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"{path} has no '{prefix}*' weights (not a DenseCLModule checkpoint?)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument(
        "--key-encoder", action="store_true", help="export the momentum (key) backbone instead"
    )
    args = parser.parse_args()
    sd = backbone_state_dict(args.checkpoint, args.key_encoder)
    tmp = f"{args.out}.tmp"
    torch.save(sd, tmp)
    os.replace(tmp, args.out)
    print(f"wrote {len(sd)} tensors to {args.out}")


if __name__ == "__main__":
    main()
