"""Weighted k-NN evaluation of a representation: a torchmetrics Metric and an online callback.

`WeightedKNN` (InstDisc / solo-learn style): L2-normalised features, cosine similarity to every bank feature,
the top-k neighbours vote with weight exp(sim / T) for their label, and the classes are ranked by summed votes.
Features are kept as `cat` states, so under DDP every process gathers the whole bank and all queries before
`compute()` and the result equals a single process's.

`OnlineKNN` callback contract (any module): the module's `validation_step`/`test_step` return a dict with
`feats` (N, D) and `labels` (N,), and the datamodule's val/test loaders are `[bank, queries]` (dataloader 0 = the
labelled training set without augmentation, 1 = the evaluation set). The callback logs
`{val,test}/knn{k}/acc1` and `/acc5` at the end of each validation / test epoch.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat


def _empty(state: list | torch.Tensor) -> bool:
    """A "cat" state is a list of tensors before a DDP sync and one tensor after it."""
    return len(state) == 0 if isinstance(state, list) else state.numel() == 0


class WeightedKNN(Metric):
    """Weighted k-NN top-1 / top-5 accuracy of `queries` given a labelled `bank` (cosine, exp(sim/T) votes)."""

    full_state_update = False

    def __init__(
        self, num_classes: int, k: int = 20, temperature: float = 0.07, chunk_size: int = 1024
    ) -> None:
        super().__init__()
        if k < 1 or temperature <= 0:
            raise ValueError(f"k must be >= 1 and temperature > 0, got k={k}, T={temperature}")
        self.num_classes, self.k, self.temperature, self.chunk_size = num_classes, k, temperature, chunk_size
        for name in ("bank_feats", "bank_labels", "query_feats", "query_labels"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, feats: torch.Tensor, labels: torch.Tensor, bank: bool) -> None:
        """Add features (N, D) and labels (N,) to the bank (`bank=True`) or to the queries."""
        feats = F.normalize(feats.detach().float(), dim=1)
        if bank:
            self.bank_feats.append(feats)
            self.bank_labels.append(labels.detach().long())
        else:
            self.query_feats.append(feats)
            self.query_labels.append(labels.detach().long())

    def compute(self) -> dict[str, torch.Tensor]:
        if _empty(self.bank_feats) or _empty(self.query_feats):
            raise RuntimeError("WeightedKNN needs bank and query features before compute()")
        bank, bank_y = dim_zero_cat(self.bank_feats), dim_zero_cat(self.bank_labels)
        queries, query_y = dim_zero_cat(self.query_feats), dim_zero_cat(self.query_labels)
        k = min(self.k, bank.shape[0])
        top1 = top5 = 0
        for start in range(0, queries.shape[0], self.chunk_size):
            q = queries[start : start + self.chunk_size]
            sim, idx = (q @ bank.T).topk(k, dim=1)
            votes = torch.zeros(q.shape[0], self.num_classes, device=q.device)
            votes.scatter_add_(1, bank_y[idx], (sim / self.temperature).exp())
            ranked = votes.argsort(dim=1, descending=True)
            y = query_y[start : start + self.chunk_size, None]
            top1 += (ranked[:, :1] == y).any(dim=1).sum().item()
            top5 += (ranked[:, : min(5, self.num_classes)] == y).any(dim=1).sum().item()
        n = queries.shape[0]
        return {"acc1": torch.tensor(top1 / n), "acc5": torch.tensor(top5 / n)}


class OnlineKNN(L.Callback):
    """k-NN accuracy of the module's features after every validation epoch and in `test` (see module docstring).

    Args:
        num_classes: number of classes (defaults to the datamodule's `num_classes`).
        k, temperature: neighbours and vote temperature (solo-learn's metric defaults: 20 and 0.07).
    """

    def __init__(self, k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> None:
        self.k, self.temperature, self.num_classes = k, temperature, num_classes
        self.metric: WeightedKNN | None = None

    def _fresh(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        n = self.num_classes or getattr(trainer.datamodule, "num_classes", None)
        if n is None:
            raise ValueError("OnlineKNN needs num_classes (argument, or the datamodule's num_classes)")
        self.metric = WeightedKNN(int(n), self.k, self.temperature).to(pl_module.device)

    def _update(self, outputs, dataloader_idx: int) -> None:
        if not isinstance(outputs, dict) or "feats" not in outputs or "labels" not in outputs:
            raise TypeError(
                "OnlineKNN needs validation_step/test_step to return {'feats': ..., 'labels': ...}"
            )
        if dataloader_idx not in (0, 1):
            raise ValueError(
                f"OnlineKNN expects eval loaders [bank, queries], got dataloader_idx={dataloader_idx}"
            )
        self.metric.update(outputs["feats"], outputs["labels"], bank=dataloader_idx == 0)

    def _log(self, pl_module: L.LightningModule, stage: str) -> None:
        if self.metric.bank_feats and self.metric.query_feats:
            out = self.metric.compute()
            name = f"{stage}/knn{self.k}"
            pl_module.log(f"{name}/acc1", out["acc1"].item(), sync_dist=False, prog_bar=stage == "val")
            pl_module.log(f"{name}/acc5", out["acc5"].item(), sync_dist=False)
        self.metric.reset()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._fresh(trainer, pl_module)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._fresh(trainer, pl_module)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._update(outputs, dataloader_idx)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(outputs, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._log(pl_module, "val")
        else:
            self.metric.reset()

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._log(pl_module, "test")
