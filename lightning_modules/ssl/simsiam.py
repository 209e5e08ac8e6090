"""SimSiam (Chen & He 2021): predictor + stop-gradient, negative cosine similarity."""

from __future__ import annotations

import torch

from lightning_modules.ssl.base import SSLModule
from lightning_modules.ssl.heads import mlp
from lightning_modules.ssl.losses import simsiam_per_pair
from lightning_modules.ssl.optim import split_params


class SimSiam(SSLModule):
    """SimSiam: 3-layer BN projector ending in an affine-free BN, 2-layer predictor (hidden `pred_hidden_dim`)
    whose LR stays constant (not scheduled), as in the paper and solo-learn."""

    def __init__(self, *args, pred_hidden_dim: int = 512, **kwargs) -> None:
        super().__init__(*args, **kwargs)

    def build_heads(self, feat_dim: int) -> None:
        hp = self.hparams
        self.projector = mlp(
            feat_dim, hp.proj_hidden_dim, hp.proj_output_dim, layers=3, last_bn=True, last_bn_affine=False
        )
        self.predictor = mlp(hp.proj_output_dim, hp.pred_hidden_dim, hp.proj_output_dim, layers=2)

    def head_param_groups(self) -> list[dict]:
        return split_params(self.projector, self.hparams.exclude_bias_n_norm) + split_params(
            self.predictor, self.hparams.exclude_bias_n_norm, fixed_lr=True
        )

    def ssl_losses(self, feats: list[torch.Tensor], batch: dict):
        z1, z2 = self.projector(feats[0]), self.projector(feats[1])
        p1, p2 = self.predictor(z1), self.predictor(z2)
        per_pair = simsiam_per_pair(p1, p2, z1, z2)
        return per_pair, per_pair.new_zeros(()), {}
