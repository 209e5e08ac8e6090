"""Weighted k-NN metric: perfect on a separable set, about chance on shuffled labels, equal to a brute-force vote."""

import pytest
import torch

from callbacks.knn import WeightedKNN


def blobs(n_per_class: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, 16, generator=g) * 5
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + 0.3 * torch.randn(len(y), 16, generator=g), y


def test_separable_set_gives_100_percent():
    bank, bank_y = blobs(20, 5, 0)
    queries, query_y = blobs(10, 5, 0)
    metric = WeightedKNN(num_classes=5, k=10, temperature=0.07)
    metric.update(bank, bank_y, bank=True)
    metric.update(queries[:25], query_y[:25], bank=False)
    metric.update(queries[25:], query_y[25:], bank=False)
    out = metric.compute()
    assert out["acc1"].item() == 1.0 and out["acc5"].item() == 1.0


def test_shuffled_labels_give_about_chance():
    bank, bank_y = blobs(100, 10, 1)
    queries, query_y = blobs(50, 10, 1)
    shuffled = bank_y[torch.randperm(len(bank_y), generator=torch.Generator().manual_seed(2))]
    metric = WeightedKNN(num_classes=10, k=20, temperature=0.1)
    metric.update(bank, shuffled, bank=True)
    metric.update(queries, query_y, bank=False)
    acc = metric.compute()["acc1"].item()
    assert 0.0 <= acc < 0.25  # chance is 0.10 over 500 queries


def test_matches_brute_force_weighted_vote():
    g = torch.Generator().manual_seed(3)
    bank, bank_y = torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    queries, query_y = torch.randn(15, 6, generator=g), torch.randint(0, 4, (15,), generator=g)
    metric = WeightedKNN(num_classes=4, k=7, temperature=0.2, chunk_size=4)
    metric.update(bank, bank_y, bank=True)
    metric.update(queries, query_y, bank=False)
    nb, nq = torch.nn.functional.normalize(bank, dim=1), torch.nn.functional.normalize(queries, dim=1)
    correct = 0
    for i in range(15):
        sims = nq[i] @ nb.T
        top = sims.argsort(descending=True)[:7]
        votes = torch.zeros(4)
        for j in top:
            votes[bank_y[j]] += torch.exp(sims[j] / 0.2)
        correct += int(votes.argmax() == query_y[i])
    assert metric.compute()["acc1"].item() == pytest.approx(correct / 15)
