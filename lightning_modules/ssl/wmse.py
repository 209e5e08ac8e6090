"""W-MSE (Ermolov et al. 2021): MSE between whitened embeddings of the two views."""

from __future__ import annotations

import torch

from lightning_modules.ssl.base import SSLModule
from lightning_modules.ssl.heads import mlp
from lightning_modules.ssl.losses import wmse_per_pair


class WMSE(SSLModule):
    """W-MSE with a 2-layer BN projector (1024 -> 64 on CIFAR), whitening sub-batches of `whitening_size`.

    Whitening statistics are computed per view and per sub-batch of this process; per-pair weights (ScoreCL) act
    only on the resulting pair terms, never on the whitening. `stopgrad=True` is solo-learn's simplified loss.
    """

    def __init__(
        self,
        *args,
        whitening_size: int = 128,
        whitening_iters: int = 1,
        whitening_eps: float = 0.0,
        wmse_stopgrad: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)

    def build_heads(self, feat_dim: int) -> None:
        self.projector = mlp(feat_dim, self.hparams.proj_hidden_dim, self.hparams.proj_output_dim)

    def ssl_losses(self, feats: list[torch.Tensor], batch: dict):
        hp = self.hparams
        z1, z2 = self.projector(feats[0]), self.projector(feats[1])
        with torch.autocast(device_type=z1.device.type, enabled=False):
            per_pair = wmse_per_pair(
                z1.float(),
                z2.float(),
                hp.whitening_size,
                hp.whitening_iters,
                hp.whitening_eps,
                hp.wmse_stopgrad,
            )
        return per_pair, per_pair.new_zeros(()), {}
