"""SimCLR (Chen et al. 2020): NT-Xent between two views, negatives gathered from every process."""

from __future__ import annotations

import torch

from lightning_modules.ssl.base import SSLModule
from lightning_modules.ssl.heads import mlp
from lightning_modules.ssl.losses import nt_xent_per_pair


class SimCLR(SSLModule):
    """SimCLR with a 2-layer projector (no BN, solo-learn) and temperature `temperature` (0.2 on CIFAR).

    Negatives come from the global batch: projections are gathered across DDP ranks with a differentiable
    all_gather, so N processes give the loss and gradients of one process on the global batch.
    """

    def __init__(self, *args, temperature: float = 0.2, **kwargs) -> None:
        super().__init__(*args, **kwargs)

    def build_heads(self, feat_dim: int) -> None:
        self.projector = mlp(
            feat_dim, self.hparams.proj_hidden_dim, self.hparams.proj_output_dim, batch_norm=False
        )

    def ssl_losses(self, feats: list[torch.Tensor], batch: dict):
        z1, z2 = self.projector(feats[0]), self.projector(feats[1])
        all_z1, offset = self.gather_with_grad(z1)
        all_z2, _ = self.gather_with_grad(z2)
        per_pair = nt_xent_per_pair(z1, z2, self.hparams.temperature, all_z1, all_z2, offset)
        return per_pair, per_pair.new_zeros(()), {}
