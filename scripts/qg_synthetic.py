"""A synthetic human-rated QG set with rule-made paraphrases (our QG-eval spec, section 8), for the CPU check.

    python scripts/qg_synthetic.py --seed 0 --out logs/qg_synthetic
    python scripts/qg_correlation.py --input logs/qg_synthetic/rated.jsonl --criteria quality \
        --paraphrases logs/qg_synthetic/paraphrases.jsonl --num-paraphrases 0 1 2 5 10 \
        --aggregations max mean --out docs/results/qg/synthetic_seed0
    python scripts/qg_synthetic.py --summarize docs/results/qg/synthetic_seed* --out docs/results/qg/synthetic.md

Writes `rated.jsonl` (one rated candidate per row: `prediction`, `references` = [gold], `quality`, `kind`,
`item_id`) and `paraphrases.jsonl` (a `scripts/paraphrase_refs.py`-style cache: 10 paraphrases per gold).

Construction (seeded): 80 gold questions from templates over small entity lists; per gold, 10 paraphrases from
the template's paraphrase patterns, and 4 candidates of known quality: a valid rewording (from patterns kept
DISJOINT from the paraphrase patterns, so a candidate is never a copy of a pseudo-reference), the same entity
with a wrong attribute, the gold with a word dropped and two words swapped, and an off-topic question about
another entity. Ratings 3 / 2 / 1.5 / 1 plus Gaussian noise (sigma 0.3). The data is built to show the effect
the paper reports (more references, better agreement with the ratings), so a run validates the pipeline and the
direction of the effect, not the paper's size of gain.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
from collections import defaultdict
from pathlib import Path

# template: (gold pattern, paraphrase patterns (10), candidate rewordings (disjoint), wrong-attribute patterns)
TEMPLATES = {
    "founded": (
        "When was {e} founded?",
        [
            "In what year was {e} founded?",
            "What year was {e} established?",
            "In which year was {e} set up?",
            "When did {e} come into existence?",
            "What is the founding year of {e}?",
            "When was {e} first established?",
            "In what year did {e} start?",
            "What was the year {e} was created?",
            "When did the founding of {e} take place?",
            "At what date was {e} founded?",
        ],
        ["Which year saw {e} established?", "What year did {e} get started?", "When was {e} created?"],
        ["When was {e} closed?", "Where was {e} founded?", "Who founded {e}?"],
    ),
    "capital": (
        "What is the capital of {e}?",
        [
            "Which city is the capital of {e}?",
            "What city serves as the capital of {e}?",
            "Name the capital city of {e}.",
            "Which city is {e}'s capital?",
            "What is {e}'s capital city?",
            "The capital of {e} is which city?",
            "Where is the seat of government of {e}?",
            "What city is the capital of {e}?",
            "Which is the capital city of {e}?",
            "Tell me the capital of {e}.",
        ],
        ["Which city is the seat of the government of {e}?", "What is the main city where {e} is governed?"],
        [
            "What is the largest city of {e}?",
            "What is the currency of {e}?",
            "What is the population of {e}?",
        ],
    ),
    "wrote": (
        "Who wrote {e}?",
        [
            "Who is the author of {e}?",
            "Who was {e} written by?",
            "Which writer wrote {e}?",
            "By whom was {e} written?",
            "Who authored {e}?",
            "Which author is responsible for {e}?",
            "Whose work is {e}?",
            "Who penned {e}?",
            "Name the author of {e}.",
            "Which person wrote {e}?",
        ],
        ["Who was the writer of {e}?", "Who is credited with writing {e}?"],
        ["Who published {e}?", "When was {e} written?", "Who translated {e}?"],
    ),
    "located": (
        "Where is {e} located?",
        [
            "In which city is {e} located?",
            "Where can {e} be found?",
            "What is the location of {e}?",
            "Where is {e} situated?",
            "In what place is {e}?",
            "Which city is home to {e}?",
            "Where does {e} stand?",
            "What city is {e} in?",
            "Where exactly is {e}?",
            "In which place is {e} situated?",
        ],
        ["Which city houses {e}?", "Where would you find {e}?"],
        ["When was {e} built?", "Who designed {e}?", "How tall is {e}?"],
    ),
}
ENTITIES = {
    "founded": [
        "the Royal Society",
        "Harvard University",
        "the Red Cross",
        "the United Nations",
        "Oxford University",
        "the British Museum",
        "the Nobel Foundation",
        "the World Bank",
        "the Boy Scouts",
        "the Louvre Museum",
        "the Smithsonian Institution",
        "the Academy of Sciences",
        "the Bank of England",
        "the BBC",
        "the Metropolitan Opera",
        "the Vienna Philharmonic",
        "the National Gallery",
        "the Sorbonne",
        "the Royal Navy",
        "the Olympic Committee",
    ],
    "capital": [
        "France",
        "Japan",
        "Kenya",
        "Peru",
        "Canada",
        "Norway",
        "Egypt",
        "Chile",
        "Vietnam",
        "Poland",
        "Morocco",
        "Sweden",
        "Argentina",
        "Thailand",
        "Ghana",
        "Portugal",
        "Mongolia",
        "Ireland",
        "Nepal",
        "Cuba",
    ],
    "wrote": [
        "Pride and Prejudice",
        "War and Peace",
        "The Odyssey",
        "Moby Dick",
        "Hamlet",
        "Don Quixote",
        "The Republic",
        "Great Expectations",
        "The Divine Comedy",
        "Les Miserables",
        "Frankenstein",
        "The Origin of Species",
        "Leviathan",
        "Faust",
        "Candide",
        "Ulysses",
        "The Prince",
        "Paradise Lost",
        "Madame Bovary",
        "Dracula",
    ],
    "located": [
        "the Eiffel Tower",
        "the Colosseum",
        "the Taj Mahal",
        "the Parthenon",
        "the Alhambra",
        "the Kremlin",
        "the Acropolis",
        "the Prado Museum",
        "the Hermitage Museum",
        "the Forbidden City",
        "the Brandenburg Gate",
        "the Sagrada Familia",
        "the Golden Gate Bridge",
        "the Sydney Opera House",
        "the Tower of London",
        "the Blue Mosque",
        "the Uffizi Gallery",
        "Angkor Wat",
        "Machu Picchu",
        "the Space Needle",
    ],
}
RATINGS = {"valid": 3.0, "wrong_attribute": 2.0, "drop_shuffle": 1.5, "off_topic": 1.0}


def drop_and_swap(question: str, rng: random.Random) -> str:
    """The gold question with one word dropped and two words swapped (a broken, ungrammatical candidate)."""
    words = question.rstrip("?").split()
    del words[rng.randrange(len(words))]
    if len(words) > 2:
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    return " ".join(words) + "?"


def build(seed: int, golds: int = 80, paraphrases: int = 10, noise: float = 0.3) -> tuple[list, list]:
    """(rated rows, paraphrase cache rows) of the synthetic set."""
    rng = random.Random(seed)
    items = [(t, e) for t in TEMPLATES for e in ENTITIES[t]]
    rng.shuffle(items)
    items = items[:golds]
    rated, cache = [], []
    for n, (template, entity) in enumerate(items):
        gold_pattern, para_patterns, valid_patterns, wrong_patterns = TEMPLATES[template]
        gold = gold_pattern.format(e=entity)
        paras = [p.format(e=entity) for p in rng.sample(para_patterns, paraphrases)]
        cache.append({"item_id": f"gold-{n}", "reference": gold, "paraphrases": paras})
        other_template, other_entity = items[(n + 1 + rng.randrange(len(items) - 1)) % len(items)]
        candidates = {
            "valid": rng.choice(valid_patterns).format(e=entity),
            "wrong_attribute": rng.choice(wrong_patterns).format(e=entity),
            "drop_shuffle": drop_and_swap(gold, rng),
            "off_topic": TEMPLATES[other_template][0].format(e=other_entity),
        }
        for kind, prediction in candidates.items():
            rated.append(
                {
                    "item_id": f"gold-{n}-{kind}",
                    "prediction": prediction,
                    "references": [gold],
                    "quality": RATINGS[kind] + rng.gauss(0.0, noise),
                    "kind": kind,
                }
            )
    return rated, cache


def summarize(folders: list[str], method: str = "spearman") -> str:
    """Markdown: correlation per metric and aggregation against the number of references, mean +- std over the
    runs in `folders` (each a `scripts/qg_correlation.py --out` folder)."""
    values: dict[tuple, list[float]] = defaultdict(list)
    counts: set[int] = set()
    for folder in folders:
        for row in csv.DictReader((Path(folder) / "correlations.csv").open()):
            if row["method"] == method:
                n = int(row["n_refs"])
                counts.add(n)
                values[row["metric"], row["aggregation"], n].append(float(row["value"]))
    ns = sorted(counts)
    lines = [
        f"{method.capitalize()} with the ratings, mean +- std over runs (n = number of runs), by number of references",
        "",
        "| metric | aggregation | " + " | ".join(str(n) for n in ns) + " |",
        "|---" * (len(ns) + 2) + "|",
    ]
    metrics = sorted(
        {k[0] for k in values}, key=lambda m: ["bleu4", "rougeL", "meteor", "bertscore"].index(m)
    )
    for metric in metrics:
        for agg in ("max", "mean", "native"):
            cells = []
            for n in ns:
                v = values.get((metric, "single" if n == 1 else agg, n), [])
                sd = f" +- {statistics.stdev(v):.3f}" if len(v) > 1 else ""
                cells.append(f"{statistics.mean(v):.3f}{sd} (n={len(v)})" if v else "-")
            if any(values.get((metric, agg, n)) for n in ns):
                lines.append(f"| {metric} | {agg} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--golds", type=int, default=80)
    parser.add_argument("--out", required=True, help="output folder (or, with --summarize, a Markdown file)")
    parser.add_argument(
        "--summarize", nargs="+", default=None, help="qg_correlation.py output folders to summarize"
    )
    args = parser.parse_args()
    if args.summarize:
        text = summarize(args.summarize)
        Path(args.out).write_text(text)
        print(text)
        return
    rated, cache = build(args.seed, args.golds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("rated.jsonl", rated), ("paraphrases.jsonl", cache)):
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(
        f"{len(rated)} rated candidates, {len(cache)} golds x {len(cache[0]['paraphrases'])} paraphrases -> {out}"
    )


if __name__ == "__main__":
    main()
