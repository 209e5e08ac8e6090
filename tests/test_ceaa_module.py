"""CEAA bi-encoder: multi-label InfoNCE masking, retrieval metrics by hand, the tag-embedding cache, re-ranking."""

from __future__ import annotations

import math

import pytest
import torch

from datamodules.ceaa import JsonlTaggingDataModule
from lightning_modules.ceaa.losses import multilabel_info_nce
from lightning_modules.ceaa.metrics import BucketRecall, retrieval_collection, retrieval_rows
from lightning_modules.ceaa.module import BiEncoderTagger
from tests.test_ceaa_data import write_jsonl_tagging

TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "hidden_dropout_prob": 0.1,  # dropout on: the cache must be computed in eval mode
}


def test_recall_precision_by_hand():
    # 2 questions, 4 candidates. q0 gold {0, 2}: ranking 2, 1, 0, 3. q1 gold {1, 5} where 5 is not a candidate.
    scores = torch.tensor([[0.2, 0.5, 0.9, 0.1], [0.1, 0.3, 0.2, 0.8]])
    gold = torch.tensor([[0, 2], [1, 5]])
    preds, target, indexes = retrieval_rows(scores, gold, torch.tensor([10, 11]))
    metrics = retrieval_collection((1, 3))
    metrics.update(preds, target, indexes=indexes)
    out = {k: float(v) for k, v in metrics.compute().items()}
    # q0: top1 {2} -> R 1/2, P 1; top3 {2,1,0} -> R 2/2, P 2/3.  q1: top1 {3} -> 0; top3 {3,1,2} -> R 1/2, P 1/3
    assert out["R@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert out["P@1"] == pytest.approx((1.0 + 0.0) / 2)
    assert out["R@3"] == pytest.approx((1.0 + 0.5) / 2)
    assert out["P@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert out["MRR"] == pytest.approx((1.0 + 1 / 2) / 2)
    # buckets over (question, gold) pairs; training counts: tag0 0, tag1 2, tag2 5, tag3 0, tag4 0, tag5 20
    bucket = BucketRecall([0, 2, 5, 0, 0, 20], (1, 3))
    bucket.update(scores, gold)
    b = {k: float(v) for k, v in bucket.compute().items()}
    assert b["pairs/unseen"] == 1 and b["R@1/unseen"] == 0.0 and b["R@3/unseen"] == 1.0  # q0's tag 0
    assert b["R@1/rare"] == 0.0 and b["R@3/rare"] == 1.0  # q1's tag 1 (rank 2)
    assert b["R@1/medium"] == 1.0  # q0's tag 2
    assert b["R@3/frequent"] == 0.0 and b["pairs/frequent"] == 1  # q1's tag 5: not a candidate, a miss


def test_info_nce_value_by_hand():
    scores = torch.tensor([[2.0, 1.0, 0.0]])
    labels = torch.tensor([[True, True, False]])
    # each positive competes only with tag 2: -(log(e^2/(e^2+1)) + log(e^1/(e^1+1))) / 2
    expected = -(math.log(math.e**2 / (math.e**2 + 1)) + math.log(math.e / (math.e + 1))) / 2
    assert float(multilabel_info_nce(scores, labels)) == pytest.approx(expected, rel=1e-6)


def test_false_negative_masking_does_not_push_shared_gold_away():
    # q0 and q1 both have gold tag A (column 0); q0 also has gold B (column 1); C (column 2) is nobody's
    scores = torch.tensor([[1.0, 0.5, 0.2], [0.3, 0.4, 0.1]], requires_grad=True)
    labels = torch.tensor([[True, True, False], [True, False, False]])
    multilabel_info_nce(scores, labels).backward()
    grad = scores.grad
    assert grad[0, 0] < 0 and grad[0, 1] < 0 and grad[1, 0] < 0  # every gold score is pulled up
    assert grad[0, 2] > 0 and grad[1, 1] > 0 and grad[1, 2] > 0  # non-gold tags are pushed down
    # plain InfoNCE (softmax over all batch tags) would push q0's other gold tag B away while pulling A
    plain = scores.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(plain[:1], torch.tensor([0])).backward()
    assert plain.grad[0, 1] > 0


def tiny_model(**kwargs) -> BiEncoderTagger:
    torch.manual_seed(0)
    return BiEncoderTagger(model_config=TINY_BERT, **kwargs)


def test_tag_cache_equals_on_the_fly_and_rerank(tmp_path):
    dm = JsonlTaggingDataModule(root=str(write_jsonl_tagging(tmp_path / "j")), eval_batch_size=2)
    model = tiny_model(eval_tag_batch_size=2)  # cache built from padded batches of 2
    model.train()
    model.refresh_tag_cache(dm)
    assert model.training  # the train/eval mode is restored
    batch = dm.collate_eval([{**dm.splits["train"][i], "index": i} for i in range(3)])
    model.eval()
    with torch.no_grad():
        cached = model.score(batch["query"])
        # all candidates in one batch: a different padding than the cache's batches of 2
        tags = model.encode_tags(dm.tokenize_tags(dm.tag_texts[: dm.num_candidates]))
        fly = model.encode_queries(batch["query"]) @ tags.T / model.hparams.temperature
    assert cached.shape == (3, 3)
    torch.testing.assert_close(cached, fly, rtol=1e-5, atol=1e-5)
    # cross-encoder re-ranking of all candidates: the final order is the cross head's order
    model.eval_args.rerank_top_n = -1
    reranked = model.rerank(cached, batch["texts"], dm)
    with torch.no_grad():
        cross = torch.stack(
            [model.cross_logits(dm.tokenize_pairs([t] * 3, dm.tag_texts[:3])) for t in batch["texts"]]
        )
    assert torch.equal(reranked.argsort(dim=1), cross.argsort(dim=1))
    # top-2 re-ranking keeps the bi-encoder's last candidate last
    model.eval_args.rerank_top_n = 2
    top2 = model.rerank(cached, batch["texts"], dm)
    assert torch.equal(top2.argmin(dim=1), cached.argmin(dim=1))


def test_separate_towers_and_init_from(tmp_path):
    shared = tiny_model()
    path = tmp_path / "enc.ckpt"
    torch.save({"state_dict": shared.state_dict()}, path)
    towers = tiny_model(shared_encoder=False, init_from=str(path))
    assert towers.tag_encoder is not None and towers.tag_encoder is not towers.query_encoder
    for name, p in shared.query_encoder.state_dict().items():
        assert torch.equal(towers.query_encoder.state_dict()[name], p)
        assert torch.equal(towers.tag_encoder.state_dict()[name], p)
    with pytest.raises(FileNotFoundError, match="init_from"):
        tiny_model(init_from=str(tmp_path / "missing.ckpt"))
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="no query_encoder weights"):
        tiny_model(init_from=str(tmp_path / "other.ckpt"))
