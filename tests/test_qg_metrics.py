"""QG metrics: each equals its reference library; max/mean/native behave as defined; METEOR with and without WordNet."""

import math

import nltk
import numpy as np
import pytest
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

from lightning_modules.qg import metrics as M
from lightning_modules.qg.metrics import QGScorer, corpus_bleu, load_wordnet, tokenize
from tests.qg_fixtures import write_tiny_wordnet

PREDS = ["What is the capital of France?", "Who wrote the play Hamlet?", "When did the war end?"]
REFS = [
    ["What is France's capital city?", "What is the capital of France?", "Name the French capital."],
    ["Who is the author of Hamlet?", "Which writer created Hamlet?"],
    ["In which year did the war finish?"],
]


@pytest.fixture(scope="module")
def scorer():
    return QGScorer(["bleu4", "rougeL"], lowercase=False)


def test_bleu_equals_sacrebleu_per_reference_and_native(scorer):
    bleu = BLEU(effective_order=True)
    pairwise = scorer.pairwise(PREDS, REFS, "bleu4")
    for p, rs, got in zip(PREDS, REFS, pairwise, strict=True):
        assert got == pytest.approx([bleu.sentence_score(p, [r]).score / 100 for r in rs])
    native = scorer.native(PREDS, REFS, "bleu4")
    assert native == pytest.approx(
        [bleu.sentence_score(p, rs).score / 100 for p, rs in zip(PREDS, REFS, strict=True)]
    )
    # joint clipping differs from the per-reference max on a case that mixes n-grams of two references
    mix_pred, mix_refs = (
        ["the cat sat on the red mat"],
        [["the cat sat on a mat", "a dog lay on the red mat"]],
    )
    assert (
        scorer.native(mix_pred, mix_refs, "bleu4")[0]
        > scorer.sentence_scores(mix_pred, mix_refs, "max")["bleu4"][0]
    )


def test_corpus_bleu_equals_sacrebleu_with_reference_streams():
    expected = BLEU().corpus_score(PREDS, [[r[0] for r in REFS], [REFS[0][1], REFS[1][1], None]]).score / 100
    refs2 = [r[:2] for r in REFS]
    assert corpus_bleu(PREDS, refs2, lowercase=False) == pytest.approx(expected)


def test_rouge_l_equals_rouge_score(scorer):
    rouge = RougeScorer(["rougeL"])
    pairwise = scorer.pairwise(PREDS, REFS, "rougeL")
    for p, rs, got in zip(PREDS, REFS, pairwise, strict=True):
        assert got == pytest.approx([rouge.score(r, p)["rougeL"].fmeasure for r in rs])
    native = scorer.native(PREDS, REFS, "rougeL")
    assert native == pytest.approx(
        [rouge.score_multi(rs, p)["rougeL"].fmeasure for p, rs in zip(PREDS, REFS, strict=True)]
    )


def test_aggregations_max_mean_and_perfect_match(scorer):
    scores = {agg: scorer.sentence_scores(PREDS, REFS, agg) for agg in ("max", "mean", "native")}
    for metric in ("bleu4", "rougeL"):
        pairwise = scorer.pairwise(PREDS, REFS, metric)
        assert scores["max"][metric] == pytest.approx([s.max() for s in pairwise])
        assert scores["mean"][metric] == pytest.approx([s.mean() for s in pairwise])
        # the first candidate matches its second reference exactly: perfect under max and native, not under mean
        assert scores["max"][metric][0] == pytest.approx(1.0)
        assert scores["native"][metric][0] == pytest.approx(1.0)
        assert scores["mean"][metric][0] < 0.9
        # single reference: all three agree
        assert scores["max"][metric][2] == pytest.approx(scores["mean"][metric][2])
    with pytest.raises(ValueError, match="aggregation"):
        scorer.sentence_scores(PREDS, REFS, "median")
    with pytest.raises(ValueError, match="non-empty"):
        scorer.sentence_scores(PREDS[:1], [[]], "max")


def test_bertscore_equals_bert_score_and_native_keeps_best_separately():
    import bert_score

    s = QGScorer(["bertscore"], lowercase=False)
    lib = bert_score.BERTScorer(model_type=M.resolve_model_path(M.PACKAGED_MINILM), num_layers=6)
    pairwise = s.pairwise(PREDS, REFS, "bertscore")
    for p, rs, got in zip(PREDS, REFS, pairwise, strict=True):
        expected = lib.score([p] * len(rs), rs)[2].numpy()
        assert got == pytest.approx(expected, abs=1e-5)
    native = s.native(PREDS, REFS, "bertscore")
    assert native == pytest.approx(lib.score(PREDS, REFS)[2].numpy(), abs=1e-5)
    maxed = s.sentence_scores(PREDS, REFS, "max")["bertscore"]
    assert maxed[0] == pytest.approx(1.0, abs=1e-5)
    assert np.all(native >= maxed - 1e-6)  # best P, R, F taken separately can only be >= the best F pair


def test_meteor_absent_wordnet_skips_with_one_message(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(M, "DEFAULT_WORDNET_DIRS", [str(tmp_path / "nothing")])
    monkeypatch.delenv("QG_WORDNET_DIR", raising=False)
    monkeypatch.delenv("NLTK_DATA", raising=False)
    reader, why = load_wordnet()
    assert reader is None and "WordNet" in why
    s = QGScorer(["bleu4", "meteor", "rougeL"])
    out = capsys.readouterr().out
    assert out.count("METEOR skipped") == 1
    assert s.metrics == ("bleu4", "rougeL") and "meteor" in s.skipped
    scores = s.sentence_scores(PREDS, REFS, "max")
    assert set(scores) == {"bleu4", "rougeL"}
    with pytest.raises(FileNotFoundError, match="not a WordNet"):
        load_wordnet(str(tmp_path))


def test_meteor_equals_nltk_on_a_tiny_wordnet(monkeypatch, tmp_path):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.translate.meteor_score import meteor_score

    data = tmp_path / "nltk_data"
    folder = write_tiny_wordnet(data / "corpora" / "wordnet", [["car", "auto"], ["year"]])
    monkeypatch.setattr(nltk.data, "path", [str(data)])
    theirs = WordNetCorpusReader(str(folder), None)
    assert [s.lemma_names() for s in theirs.synsets("auto")] == [["car", "auto"]]

    s = QGScorer(["meteor"], wordnet_dir=str(folder))
    pred, refs = "what car won the race in that year ?", ["which auto won the race that year ?", "who won ?"]
    ours = s.sentence_scores([pred], [refs], "native")["meteor"][0]
    assert ours == pytest.approx(meteor_score([tokenize(r) for r in refs], tokenize(pred), wordnet=theirs))
    pairwise = s.pairwise([pred], [refs], "meteor")[0]
    assert pairwise == pytest.approx(
        [meteor_score([tokenize(r)], tokenize(pred), wordnet=theirs) for r in refs]
    )
    # the synonym counts: without it (a WordNet lacking car/auto), the score is lower. (nltk matches synonyms
    # after Porter stemming, so the pair is one that stemming leaves unchanged.)
    bare = write_tiny_wordnet(tmp_path / "bare", [["year"]])
    without = QGScorer(["meteor"], wordnet_dir=str(bare)).sentence_scores([pred], [refs], "native")["meteor"][
        0
    ]
    assert ours > without > 0
    assert not math.isclose(ours, without)
