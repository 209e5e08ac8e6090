"""DenseCL (Wang et al., CVPR 2021) on the SSL base, with the dense positive-pair rule as an option (HoughCL).

Query encoder = backbone + global neck (MLP on pooled features) + dense neck (1x1 conv, ReLU, 1x1 conv on the last
feature map); key encoder = a momentum copy of all three, updated in `on_train_batch_end` and kept out of the
optimiser. Two queues (global keys; average-pooled dense keys, as the official code) hold L2-normalised keys of
earlier batches; under DDP the keys of every process are all-gathered before they are enqueued, so N processes keep
the same queue as one process on the global batch.

Loss per image: (1 - `dense_weight`) * global InfoNCE + `dense_weight` * mean over the query's used cells of the
dense InfoNCE, whose positive for query cell i is the key cell chosen by the pair rule from the cosine similarity
of the *backbone* feature maps (query encoder vs key encoder, official DenseCL) and whose negatives are the dense
queue. DenseCL is asymmetric: view 0 is the query, view 1 the key.

When the batch carries crop geometry (`boxes`, `flips` from `datamodules.houghcl`), the module logs the
pair-correctness of the rule in use and of arg-max and Hough on the same batch (`train/pairs/<rule>`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.houghcl.geometry import PairPrecision, pair_correctness
from lightning_modules.houghcl.pairs import build_pair_rule
from lightning_modules.nets.backbones import SmallCNN
from lightning_modules.ssl.base import SSLModule
from lightning_modules.ssl.heads import mlp
from lightning_modules.ssl.optim import split_params

MOMENTUM_PARTS = ("momentum_backbone", "momentum_global", "momentum_dense")


def feature_map(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last spatial feature map (B, C, H, W) of a `build_backbone` network (small_cnn or a timm CNN)."""
    if isinstance(backbone, SmallCNN):
        return backbone.features[:-1](x)  # everything but the final Flatten
    return backbone.forward_features(x)


def pooled_features(backbone: nn.Module, fmap: torch.Tensor) -> torch.Tensor:
    """The backbone's own feature vector from its feature map (what `backbone(x)` returns)."""
    if isinstance(backbone, SmallCNN):
        return fmap.flatten(1)
    return backbone.forward_head(fmap)


def dense_neck(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """DenseCL's dense projection head: 1x1 conv, ReLU, 1x1 conv."""
    return nn.Sequential(
        nn.Conv2d(in_dim, hidden_dim, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1)
    )


class DenseCLModule(SSLModule):
    """DenseCL / HoughCL.

    Args (besides `SSLModule`'s; `proj_hidden_dim` / `proj_output_dim` size both necks):
        pairing: `argmax` (DenseCL), `threshold` or `hough` (HoughCL); `pairing_options`: the rule's keyword
            options (see `lightning_modules.houghcl.pairs`).
        queue_size: length K of both queues (must be divisible by the global batch).
        temperature: InfoNCE temperature (0.2 in DenseCL).
        dense_weight: lambda of the dense loss (0.5 in DenseCL).
        base_momentum: EMA momentum of the key encoder (0.999 in DenseCL; constant).
        log_pair_rules: rules whose pair correctness is logged on each batch besides the one in use;
            `log_rule_options` maps a rule name to its options there (e.g. the Hough options of the Hough run, so
            the arg-max run logs the same Hough rule).
    """

    def __init__(
        self,
        *args,
        pairing: str = "argmax",
        pairing_options: dict | None = None,
        queue_size: int = 65536,
        temperature: float = 0.2,
        dense_weight: float = 0.5,
        base_momentum: float = 0.999,
        log_pair_rules: tuple[str, ...] = ("argmax", "hough"),
        log_rule_options: dict[str, dict] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.pair_rule = build_pair_rule(pairing, pairing_options)
        options = log_rule_options or {}
        self.log_rules = {
            name: build_pair_rule(name, options.get(name)) for name in log_pair_rules if name != pairing
        }
        self.pair_metrics = nn.ModuleDict({name: PairPrecision() for name in (pairing, *self.log_rules)})
        if not 0.0 <= dense_weight <= 1.0:
            raise ValueError(f"dense_weight must be in [0, 1], got {dense_weight}")

    # ----- networks and queues ---------------------------------------------------------------------------
    def build_heads(self, feat_dim: int) -> None:
        hp = self.hparams
        was_training = self.backbone.training
        self.backbone.eval()  # a shape probe: no BatchNorm statistics are touched
        with torch.no_grad():
            map_dim = feature_map(self.backbone, torch.zeros(1, *hp.input_shape)).shape[1]
        self.backbone.train(was_training)
        self.global_neck = mlp(feat_dim, hp.proj_hidden_dim, hp.proj_output_dim, batch_norm=False)
        self.dense_neck = dense_neck(map_dim, hp.proj_hidden_dim, hp.proj_output_dim)
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_global = copy.deepcopy(self.global_neck)
        self.momentum_dense = copy.deepcopy(self.dense_neck)
        for name in MOMENTUM_PARTS:
            getattr(self, name).requires_grad_(False)
        size, dim = int(hp.get("queue_size", 65536)), hp.proj_output_dim
        g = torch.Generator().manual_seed(0)
        self.register_buffer("queue_global", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("queue_dense", F.normalize(torch.randn(size, dim, generator=g), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys: tuple[torch.Tensor, torch.Tensor] | None = None

    def head_param_groups(self) -> list[dict]:
        """Only the query necks are optimised; the momentum networks follow by EMA."""
        heads = nn.ModuleList([self.global_neck, self.dense_neck])
        return split_params(heads, self.hparams.exclude_bias_n_norm)

    def on_fit_start(self) -> None:
        size = self.queue_global.shape[0]
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "batch_size"):
            global_batch = int(dm.batch_size) * self.trainer.world_size
            if size % global_batch:
                raise ValueError(
                    f"queue_size={size} must be divisible by the global batch {global_batch} "
                    "(batch_size x processes), as in MoCo/DenseCL"
                )

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key = m * key + (1 - m) * query, for the backbone and both necks."""
        m = self.hparams.base_momentum
        pairs = [
            (self.momentum_backbone, self.backbone),
            (self.momentum_global, self.global_neck),
            (self.momentum_dense, self.dense_neck),
        ]
        for key_net, query_net in pairs:
            for pk, pq in zip(key_net.parameters(), query_net.parameters(), strict=True):
                pk.mul_(m).add_(pq.detach(), alpha=1 - m)

    @torch.no_grad()
    def enqueue(self, global_keys: torch.Tensor, dense_keys: torch.Tensor) -> None:
        """Gather the keys of every process (rank order) and write them at the queue pointer (FIFO)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            global_keys = self.all_gather(global_keys).flatten(0, 1)
            dense_keys = self.all_gather(dense_keys).flatten(0, 1)
        n, size = global_keys.shape[0], self.queue_global.shape[0]
        if size % n:
            raise ValueError(f"queue_size={size} must be divisible by the enqueued batch {n}")
        ptr = int(self.queue_ptr)
        self.queue_global[ptr : ptr + n] = global_keys
        self.queue_dense[ptr : ptr + n] = dense_keys
        self.queue_ptr.fill_((ptr + n) % size)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._pending_keys is not None:
            self.enqueue(*self._pending_keys)
            self._pending_keys = None
        self.momentum_update()

    # ----- losses ----------------------------------------------------------------------------------------
    def ssl_losses(self, feats, batch):  # pragma: no cover - DenseCL needs feature maps, see training_step
        raise NotImplementedError("DenseCLModule computes its losses from feature maps in training_step")

    def dense_losses(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Per-image DenseCL losses (N,), the query's backbone features (for the probe) and the logs."""
        hp = self.hparams
        views = batch["views"]
        q_map = feature_map(self.backbone, views[0])
        q_feat = pooled_features(self.backbone, q_map)
        q_global = F.normalize(self.global_neck(q_feat), dim=1)
        q_dense = F.normalize(self.dense_neck(q_map).flatten(2), dim=1)  # (B, D, N)
        with torch.no_grad():
            k_map = feature_map(self.momentum_backbone, views[1])
            k_feat = pooled_features(self.momentum_backbone, k_map)
            k_global = F.normalize(self.momentum_global(k_feat), dim=1)
            k_dense = F.normalize(self.momentum_dense(k_map).flatten(2), dim=1)  # (B, D, M)
            grid = tuple(q_map.shape[-2:])
            qb = F.normalize(q_map.detach().flatten(2), dim=1)
            kb = F.normalize(k_map.flatten(2), dim=1)
            sim = qb.transpose(1, 2) @ kb  # (B, N, M): backbone features, as the official code
            flips = batch.get("flips")
            mismatch = (flips[:, 0] != flips[:, 1]) if flips is not None else None
            index, valid = self.pair_rule(sim, grid, mismatch)
            k_pos = k_dense.gather(2, index[:, None, :].expand(-1, k_dense.shape[1], -1))
            self._pending_keys = (k_global, F.normalize(k_dense.mean(dim=2), dim=1))
        t = hp.temperature
        pos = (q_global * k_global).sum(1, keepdim=True)
        neg = q_global @ self.queue_global.clone().T
        global_loss = torch.logsumexp(torch.cat([pos, neg], 1) / t, 1) - pos[:, 0] / t
        d_pos = (q_dense * k_pos).sum(1)  # (B, N)
        d_neg = torch.einsum("bdn,kd->bnk", q_dense, self.queue_dense.clone())
        d_all = torch.cat([d_pos[..., None], d_neg], 2) / t
        cell_loss = torch.logsumexp(d_all, 2) - d_pos / t
        mask = valid.to(cell_loss.dtype)
        dense_loss = (cell_loss * mask).sum(1) / mask.sum(1).clamp_min(1)
        per_image = (1 - hp.dense_weight) * global_loss + hp.dense_weight * dense_loss
        logs = {
            "global_loss": global_loss.mean().detach(),
            "dense_loss": dense_loss.mean().detach(),
            "dense_used": valid.float().mean(),
        }
        if "boxes" in batch and flips is not None:
            self._log_pair_quality(batch, sim, grid, mismatch, index)
        return per_image, q_feat, logs

    @torch.no_grad()
    def _log_pair_quality(self, batch, sim, grid, mismatch, index) -> None:
        boxes, flips = batch["boxes"], batch["flips"]
        chosen = {self.hparams.pairing: index}
        for name, rule in self.log_rules.items():
            chosen[name] = rule(sim, grid, mismatch)[0]
        for name, idx in chosen.items():
            correct, total = pair_correctness(idx, boxes[:, 0], flips[:, 0], boxes[:, 1], flips[:, 1], grid)
            metric = self.pair_metrics[name]
            metric(correct, total)
            self.log(f"train/pairs/{name}", metric, on_step=True, on_epoch=True)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if not isinstance(batch, dict) or "views" not in batch or len(batch["views"]) < 2:
            raise ValueError("DenseCL training batches must be dicts with two 'views' (datamodules.houghcl)")
        per_pair, q_feat, logs = self.dense_losses(batch)
        probe_loss = F.cross_entropy(self.probe(q_feat.detach()), batch["labels"])
        return self.combine_losses(per_pair, 0.0, probe_loss, logs)
