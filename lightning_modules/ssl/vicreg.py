"""VICReg (Bardes et al. 2022): invariance + variance + covariance."""

from __future__ import annotations

import torch

from lightning_modules.ssl.base import SSLModule
from lightning_modules.ssl.heads import mlp
from lightning_modules.ssl.losses import vicreg_covariance, vicreg_invariance_per_pair, vicreg_variance


class VICReg(SSLModule):
    """VICReg with a 3-layer BN projector; L = sim_w * invariance + var_w * (v(z1)+v(z2)) + cov_w * (c(z1)+c(z2)).

    Only the invariance term is per pair (and so the only one ScoreCL weights); the variance and covariance terms
    use embeddings gathered from every process (as solo-learn does), so DDP matches one process.
    """

    def __init__(
        self, *args, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)

    def build_heads(self, feat_dim: int) -> None:
        hp = self.hparams
        self.projector = mlp(feat_dim, hp.proj_hidden_dim, hp.proj_output_dim, layers=3)

    def ssl_losses(self, feats: list[torch.Tensor], batch: dict):
        hp = self.hparams
        z1, z2 = self.projector(feats[0]), self.projector(feats[1])
        per_pair = hp.sim_weight * vicreg_invariance_per_pair(z1, z2)
        g1, _ = self.gather_with_grad(z1)
        g2, _ = self.gather_with_grad(z2)
        var = vicreg_variance(g1) + vicreg_variance(g2)
        cov = vicreg_covariance(g1) + vicreg_covariance(g2)
        extra = hp.var_weight * var + hp.cov_weight * cov
        return per_pair, extra, {"vicreg/var": var.detach(), "vicreg/cov": cov.detach()}
