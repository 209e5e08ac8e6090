"""Tiny on-disk fixtures for the QG tests: lmqg/qg_squad JSON lines, QG-Bench's final_result.csv, a WordNet folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from lightning_modules.qg.metrics import lexnames_text

SUBJECTS = ["the river", "the castle", "the king", "the museum", "the bridge", "the festival"]
YEARS = ["1820", "1755", "1901", "1642", "1999", "1888"]

QGBENCH_HEADER = [
    "correctness",
    "grammaticality",
    "understandability",
    "prediction",
    "Bleu_4",
    "METEOR",
    "ROUGE_L",
    "BERTScore",
    "MoverScore",
    "reference_raw",
    "answer_raw",
    "paragraph_raw",
    "sentence_raw",
    "reference_norm",
    "model",
]


def qg_rows(n: int, offset: int = 0) -> list[dict]:
    """Made-up SQuAD-style rows in the lmqg/qg_squad schema."""
    rows = []
    for i in range(offset, offset + n):
        subject, year = SUBJECTS[i % 6], YEARS[(i * 5) % 6]
        paragraph = f"{subject.capitalize()} was built in {year}. It is famous in the region."
        rows.append(
            {
                "question": f"When was {subject} built?",
                "paragraph": paragraph,
                "answer": year,
                "sentence": f"{subject.capitalize()} was built in {year}.",
                "paragraph_answer": paragraph.replace(year, f"<hl> {year} <hl>"),
                "paragraph_sentence": f"<hl> {paragraph} <hl>",
            }
        )
    return rows


def write_qg_squad(root: Path, sizes=(("train", 16), ("validation", 4), ("test", 6))) -> Path:
    """``root/{split}.jsonl`` as in lmqg/qg_squad."""
    root.mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, n in sizes:
        with (root / f"{split}.jsonl").open("w") as fh:
            for row in qg_rows(n, offset):
                fh.write(json.dumps(row) + "\n")
        offset += n
    return root


def write_qgbench_csv(path: Path, rows: list[dict]) -> Path:
    """A final_result.csv with QG-Bench's exact header; missing fields are filled with plausible values."""
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=QGBENCH_HEADER)
        writer.writeheader()
        for row in rows:
            full = {k: "" for k in QGBENCH_HEADER}
            full.update(answer_raw="x", paragraph_raw="p", sentence_raw="s", model="sys", MoverScore="0.5")
            full.update(row)
            full["reference_norm"] = full["reference_norm"] or full["reference_raw"].lower()
            writer.writerow(full)
    return path


def write_tiny_wordnet(folder: Path, noun_synsets: list[list[str]]) -> Path:
    """A WordNet 3.0-format folder holding only the given noun synsets (byte offsets, index, lexnames, ...).

    Enough for nltk's WordNetCorpusReader and METEOR's synonym stage; no relations, glosses are dummies.
    """
    folder.mkdir(parents=True, exist_ok=True)
    header = "  1 WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.\n"
    for pos, letter in (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r")):
        data, index = header, {}
        for words in noun_synsets if pos == "noun" else []:
            offset = len(data.encode())
            lemmas = " ".join(f"{w} 0" for w in words)
            data += f"{offset:08d} 06 {letter} {len(words):02x} {lemmas} 000 | a test synset  \n"
            for w in words:
                index.setdefault(w, []).append(offset)
        (folder / f"data.{pos}").write_text(data)
        lines = [
            f"{w} {letter} {len(o)} 0 {len(o)} 0 " + " ".join(f"{x:08d}" for x in o) + "  \n"
            for w, o in sorted(index.items())
        ]
        (folder / f"index.{pos}").write_text(header + "".join(lines))
        (folder / f"{pos}.exc").write_text("")
    (folder / "index.sense").write_text("")
    (folder / "lexnames").write_text(lexnames_text())
    return folder
