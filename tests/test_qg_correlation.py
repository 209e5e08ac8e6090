"""Correlation tool: known correlations on synthetic data, QG-Bench's CSV layout, multi-reference rows, outputs."""

import csv
import json

import numpy as np
import pytest
from scipy import stats

from scripts import qg_correlation as C
from tests.qg_fixtures import write_qgbench_csv


def test_monotone_data_gives_spearman_and_kendall_one_with_tight_cis():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    variants = {("m", 1, "single"): x, ("neg", 1, "single"): -x, ("noise", 1, "single"): rng.normal(size=200)}
    rows = C.correlate(variants, {"human": np.exp(x)}, n_boot=200, seed=0)
    get = {(r["metric"], r["method"]): r for r in rows}
    assert get[("m", "spearman")]["value"] == pytest.approx(1.0)
    assert get[("m", "kendall")]["value"] == pytest.approx(1.0)
    assert get[("m", "spearman")]["ci_low"] == pytest.approx(1.0)
    assert get[("neg", "spearman")]["value"] == pytest.approx(-1.0)
    assert get[("m", "pearson")]["value"] == pytest.approx(stats.pearsonr(x, np.exp(x))[0])
    assert get[("m", "pearson")]["value"] < 0.95  # nonlinear: Pearson below 1
    noise = get[("noise", "spearman")]
    assert abs(noise["value"]) < 0.2 and noise["ci_low"] < 0 < noise["ci_high"]


def test_bootstrap_matches_scipy_on_each_resample():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=50), rng.normal(size=50)
    idx = rng.integers(0, 50, size=(5, 50))
    for method in C.METHODS:
        got = C.bootstrap(x, y, method, idx)
        assert got == pytest.approx([C.correlation(x[i], y[i], method)[0] for i in idx])


def test_missing_ratings_are_dropped_not_imputed():
    x = np.arange(10.0)
    human = x.copy()
    human[[2, 7]] = np.nan
    rows = C.correlate({("m", 1, "single"): x}, {"h": human}, n_boot=0, seed=0)
    assert {r["n"] for r in rows} == {8} and all(r["value"] == pytest.approx(1.0) for r in rows)


def _qgbench_fixture(tmp_path):
    """12 rows (2 systems x 6 items): good predictions rated high, bad ones low; authors' columns present."""
    golds = [
        "When was the castle built?",
        "Who built the bridge?",
        "Where is the museum?",
        "What did the king collect?",
        "Why did the river flood?",
        "How long is the festival?",
    ]
    rows = []
    for i, gold in enumerate(golds):
        rows.append(
            {
                "prediction": gold.replace("?", " ?"),
                "reference_raw": gold,
                "model": "good",
                "correctness": 3,
                "grammaticality": 3,
                "understandability": 2.8 + 0.02 * i,
                "Bleu_4": 0.9,
                "ROUGE_L": 0.95,
                "METEOR": 0.8,
                "BERTScore": 0.95,
            }
        )
        rows.append(
            {
                "prediction": "what is it ?" if i % 2 else "the castle when",
                "reference_raw": gold,
                "model": "bad",
                "correctness": 1 + 0.1 * i,
                "grammaticality": "" if i == 0 else 2,
                "understandability": 1.5,
                "Bleu_4": 0.0,
                "ROUGE_L": 0.1,
                "METEOR": 0.1,
                "BERTScore": 0.7,
            }
        )
    return write_qgbench_csv(tmp_path / "final_result.csv", rows), golds


def test_qgbench_layout_single_and_multi_reference_with_outputs(tmp_path):
    path, golds = _qgbench_fixture(tmp_path)
    cache = tmp_path / "para.jsonl"
    with cache.open("w") as fh:
        for i, gold in enumerate(golds):
            paras = [f"paraphrase {k} of {gold}" for k in range(3)]
            if i == 1:  # an exact copy of item 1's "bad" prediction among the paraphrases
                paras[1] = "what is it ?"
            fh.write(json.dumps({"item_id": f"q{i}", "reference": gold, "paraphrases": paras}) + "\n")
    out = tmp_path / "out"
    result = C.main(
        [
            "--input",
            str(path),
            "--layout",
            "qgbench",
            "--out",
            str(out),
            "--metrics",
            "bleu4",
            "rougeL",
            "meteor",
            "--paraphrases",
            str(cache),
            "--num-paraphrases",
            "0",
            "1",
            "3",
            "--aggregations",
            "max",
            "mean",
            "--bootstrap",
            "50",
            "--wordnet-dir",
            "off",
            "--save-scores",
        ]
    )
    rows = result["rows"]
    assert {(r["n_refs"], r["aggregation"]) for r in rows} == {
        (1, "single"),
        (2, "max"),
        (2, "mean"),
        (4, "max"),
        (4, "mean"),
        (1, "authors"),
    }
    assert {r["criterion"] for r in rows} == {"correctness", "grammaticality", "understandability"}
    single = {(r["metric"], r["criterion"], r["method"]): r for r in rows if r["aggregation"] == "single"}
    assert single[("bleu4", "correctness", "spearman")]["value"] > 0.5
    assert single[("bleu4", "grammaticality", "pearson")]["n"] == 11  # the blank rating is dropped
    # the copied prediction becomes a perfect match once 3 paraphrases are references (max), not with 1
    with (out / "scores.csv").open() as fh:
        scores = list(csv.DictReader(fh))
    assert float(scores[3]["bleu4@4:max"]) == pytest.approx(1.0)
    assert float(scores[3]["bleu4@2:max"]) < 0.5
    multi = [r for r in rows if r["n_refs"] == 4 and r["aggregation"] == "max"]
    assert all(not np.isnan(r["delta_vs_single"]) and r["delta_ci_low"] <= r["delta_ci_high"] for r in multi)
    assert result["skipped"] == {"meteor": "METEOR skipped: disabled (wordnet_dir=off)."}
    assert len(result["system_rows"]) == 0  # two systems: too few for a system-level correlation
    assert {c["metric"] for c in result["crosscheck"]} == {"bleu4", "rougeL"}
    md = (out / "correlations.md").read_text()
    assert "spearman, single reference" in md and "4 references (max)" in md and "authors' precomputed" in md
    assert (out / "corr_vs_refs.png").stat().st_size > 1000
    with (out / "correlations.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)


def test_clear_errors_for_missing_columns_and_cache_items(tmp_path):
    path, _ = _qgbench_fixture(tmp_path)
    with pytest.raises(KeyError, match="lacks columns"):
        C.main(["--input", str(path), "--criteria", "fluency", "--out", str(tmp_path / "o")])
    cache = tmp_path / "para.jsonl"
    cache.write_text(json.dumps({"item_id": "x", "reference": "Other?", "paraphrases": ["a"]}) + "\n")
    with pytest.raises(KeyError, match="no cached paraphrases"):
        C.main(
            [
                "--input",
                str(path),
                "--layout",
                "qgbench",
                "--paraphrases",
                str(cache),
                "--num-paraphrases",
                "1",
                "--metrics",
                "bleu4",
                "--out",
                str(tmp_path / "o"),
            ]
        )
