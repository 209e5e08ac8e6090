"""Multi-label in-batch InfoNCE with false-negative masking (spec section 2.3, reconstructed)."""

from __future__ import annotations

import torch


def multilabel_info_nce(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over queries of ``-(1/|G_i|) sum_{g in G_i} log(e^{s_ig} / (e^{s_ig} + sum_{t not in G_i} e^{s_it}))``.

    ``scores`` are ``[queries, tags]`` logits (similarity / temperature); ``labels`` is a bool matrix of the same
    shape marking every gold tag of each query. Each positive competes only with the query's *non-gold* tags: the
    other gold tags of the same query are masked out of its denominator, so a multi-label query never pushes one of
    its own tags away. Queries without a positive in the batch are ignored (an error if none has one).
    """
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} differ in shape")
    labels = labels.bool()
    has_pos = labels.any(dim=1)
    if not bool(has_pos.any()):
        raise ValueError("no query in the batch has a gold tag among the batch's tags")
    # log-sum-exp over each query's non-gold tags (-inf when it has none); then, per positive g,
    # -log softmax of g over {g} + those negatives = logaddexp(s_g, neg_lse) - s_g
    neg_lse = torch.logsumexp(scores.masked_fill(labels, float("-inf")), dim=1, keepdim=True)
    per_pair = torch.logaddexp(scores, neg_lse.expand_as(scores)) - scores
    per_query = (per_pair * labels).sum(dim=1) / labels.sum(dim=1).clamp_min(1)
    return per_query[has_pos].mean()
