"""Retrieval metrics for multi-label tagging: torchmetrics.retrieval overall, sum-reduced states per frequency bucket.

Overall R@k / P@k / nDCG@k / MRR use ``torchmetrics.retrieval`` with ``indexes`` = the question's dataset row and one
row per (question, candidate tag). torchmetrics' recall divides by the relevant rows it sees, so a gold tag that is
not a candidate (ARC: a validation label outside ``targets_ARC.csv``) gets one extra row scored ``-inf``-like
(``MISSING_SCORE``) and marked relevant: it counts as a miss, as the spec asks. These metrics keep list states that
torchmetrics gathers across DDP ranks before computing, and question rows are unique across ranks (the unrepeated
eval sampler), so the numbers equal the single-process ones.

R@k by tag-frequency bucket cannot be said in torchmetrics' per-query grouping (a bucket is a property of each
(question, gold tag) pair, not of the question), so `BucketRecall` keeps per-bucket hit and pair counts as
sum-reduced states: recall of a bucket = share of (question, gold tag) pairs of that bucket whose tag is in the top-k.
For single-label data this equals the per-question R@k restricted to the bucket's questions.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.retrieval import RetrievalMRR, RetrievalNormalizedDCG, RetrievalPrecision, RetrievalRecall

MISSING_SCORE = -1.0e6
# Buckets of a gold tag's training frequency (spec section 5): name, lowest count, highest count (inclusive).
BUCKETS = (("unseen", 0, 0), ("rare", 1, 2), ("medium", 3, 10), ("frequent", 11, None))


def bucket_of(counts: torch.Tensor) -> torch.Tensor:
    """Bucket index (into BUCKETS) of each training frequency."""
    out = torch.empty_like(counts, dtype=torch.long)
    for b, (_, lo, hi) in enumerate(BUCKETS):
        inside = counts >= lo if hi is None else (counts >= lo) & (counts <= hi)
        out[inside] = b
    return out


def retrieval_collection(ks: tuple[int, ...]) -> MetricCollection:
    metrics: dict = {}
    for k in ks:
        metrics[f"R@{k}"] = RetrievalRecall(top_k=k)
        metrics[f"P@{k}"] = RetrievalPrecision(top_k=k)
    metrics[f"nDCG@{max(ks)}"] = RetrievalNormalizedDCG(top_k=max(ks))
    metrics["MRR"] = RetrievalMRR()
    return MetricCollection(metrics, compute_groups=False)


def retrieval_rows(
    scores: torch.Tensor, gold: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten ``[questions, candidates]`` scores and padded gold ids (``-1`` = none) into torchmetrics rows.

    Gold ids ``>= candidates`` are not candidates: each adds a relevant row scored ``MISSING_SCORE`` (a miss).
    """
    n, c = scores.shape
    target = torch.zeros(n, c, dtype=torch.bool, device=scores.device)
    valid = (gold >= 0) & (gold < c)
    rows = torch.arange(n, device=scores.device).unsqueeze(1).expand_as(gold)
    target[rows[valid], gold[valid]] = True
    preds, targets, indexes = (
        [scores.flatten()],
        [target.flatten()],
        [index.unsqueeze(1).expand(n, c).flatten()],
    )
    missing = gold >= c
    if bool(missing.any()):
        m = int(missing.sum())
        preds.append(torch.full((m,), MISSING_SCORE, dtype=scores.dtype, device=scores.device))
        targets.append(torch.ones(m, dtype=torch.bool, device=scores.device))
        indexes.append(index.unsqueeze(1).expand_as(gold)[missing])
    return torch.cat(preds), torch.cat(targets), torch.cat(indexes)


class BucketRecall(Metric):
    """R@k per frequency bucket over (question, gold tag) pairs; sum-reduced states, exact under DDP."""

    full_state_update = False

    def __init__(self, train_counts: list[int] | torch.Tensor, ks: tuple[int, ...]) -> None:
        super().__init__()
        self.ks = tuple(ks)
        counts = torch.as_tensor(train_counts, dtype=torch.long)
        self.register_buffer("bucket", bucket_of(counts), persistent=False)
        shape = (len(BUCKETS), len(self.ks))
        self.add_state("hits", default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("pairs", default=torch.zeros(len(BUCKETS), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, gold: torch.Tensor) -> None:
        """``scores``: ``[questions, candidates]``; ``gold``: padded global tag ids (``-1`` = none)."""
        c = scores.shape[1]
        valid = gold >= 0
        if not bool(valid.any()):
            return
        bucket = self.bucket.to(gold.device)[gold.clamp_min(0)]
        top = scores.topk(min(max(self.ks), c), dim=1).indices  # [n, K]
        for j, k in enumerate(self.ks):
            hit = (top[:, :k].unsqueeze(1) == gold.unsqueeze(2)).any(dim=2) & valid & (gold < c)
            self.hits[:, j].index_add_(0, bucket[valid], hit[valid].double())
        self.pairs.index_add_(0, bucket[valid], torch.ones_like(bucket[valid], dtype=torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"R@k/bucket": recall}`` for buckets with pairs, plus ``{"pairs/bucket": count}``."""
        out = {}
        for b, (name, _, _) in enumerate(BUCKETS):
            out[f"pairs/{name}"] = self.pairs[b]
            if self.pairs[b] > 0:
                for j, k in enumerate(self.ks):
                    out[f"R@{k}/{name}"] = self.hits[b, j] / self.pairs[b]
        return out
