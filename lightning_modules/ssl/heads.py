"""Projector and predictor heads (MLPs) of the SSL methods."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    layers: int = 2,
    batch_norm: bool = True,
    last_bn: bool = False,
    last_bn_affine: bool = True,
) -> nn.Sequential:
    """`layers` linear layers; hidden ones followed by (BN) + ReLU; optional BN after the last one.

    solo-learn's heads: SimCLR 2 layers without BN; SimSiam 3 layers with BN and a final affine-free BN;
    VICReg 3 layers with BN; W-MSE 2 layers with BN; the SimSiam predictor 2 layers with BN.
    """
    if layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {layers}")
    blocks: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        blocks.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            blocks.append(nn.BatchNorm1d(hidden_dim))
        blocks.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    blocks.append(nn.Linear(dim, out_dim))
    if last_bn:
        blocks.append(nn.BatchNorm1d(out_dim, affine=last_bn_affine))
    return nn.Sequential(*blocks)
