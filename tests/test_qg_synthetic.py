"""The synthetic rated set of scripts/qg_synthetic.py: its construction rules hold (spec section 8)."""

from collections import Counter

from scripts.qg_synthetic import RATINGS, build


def test_synthetic_set_follows_its_rules():
    rated, cache = build(seed=3)
    assert len(cache) == 80 and all(len(c["paraphrases"]) == 10 for c in cache)
    assert Counter(r["kind"] for r in rated) == {k: 80 for k in RATINGS}
    paraphrases = {c["reference"]: set(c["paraphrases"]) for c in cache}
    for row in rated:
        gold = row["references"][0]
        # candidates are never copies of a pseudo-reference or of the gold (the rules are disjoint)
        assert row["prediction"] not in paraphrases[gold] and row["prediction"] != gold
        assert abs(row["quality"] - RATINGS[row["kind"]]) < 2.0
    assert build(seed=3) == (rated, cache)  # seeded
    assert build(seed=4)[0] != rated
