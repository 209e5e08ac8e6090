"""CEAA data: the ARC (TagRec) CSV layout, the generic JSONL layout and QA pairs on tiny on-disk fixtures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from datamodules.ceaa import (
    ArcTaggingDataModule,
    JsonlTaggingDataModule,
    QAPairDataModule,
    read_qa_pairs,
    tag_text,
)
from datamodules.errors import DataLayoutError

ARC_HEADER = [
    "questionID",
    "originalQuestionID",
    "totalPossiblePoint",
    "AnswerKey",
    "isMultipleChoiceQuestion",
    "includesDiagram",
    "examName",
    "grade",
    "year",
    "QCLabel",
    "Question",
    "subject",
    "category",
    "fold",
]
ARC_TARGETS = ["LIFE_food chain", "MAT_properties of objects_TEXT", "EARTH_weather", "SPACE_stars"]
ARC_ROWS = {
    "train": [
        (
            "LIFE_food chain",
            "Which animal eats plants in a food chain? (A) fox (B) rabbit (C) hawk (D) snake",
        ),
        ("LIFE_food chain", "What do producers in a food web make? (A) food (B) rocks (C) air (D) water"),
        (
            "MAT_properties of objects_TEXT",
            "Which object feels rough? (A) pillow (B) sandpaper (C) glass (D) silk",
        ),
        ("EARTH_weather", "Which tool measures rain? (A) ruler (B) rain gauge (C) scale (D) clock"),
        ("EARTH_weather", "What kind of cloud brings storms? (A) cirrus (B) cumulonimbus (C) fog (D) none"),
        ("TRAINONLY_magnets", "What does a magnet attract? (A) iron (B) wood (C) paper (D) glass"),
    ],
    "val": [
        ("SPACE_stars", "What is the Sun? (A) a planet (B) a star (C) a moon (D) a comet"),
        ("TRAINONLY_magnets", "Which metal sticks to a magnet? (A) iron (B) gold (C) copper (D) tin"),
    ],
    "test": [
        ("LIFE_food chain", "Which is a consumer? (A) grass (B) deer (C) sun (D) soil"),
        ("SPACE_stars", "Which star is closest to Earth? (A) Sirius (B) the Sun (C) Vega (D) Polaris"),
        (
            "EARTH_weather",
            "Which instrument measures wind speed? (A) anemometer (B) barometer (C) scale (D) ruler",
        ),
    ],
}
FILES = {"train": "train_QC_data.csv", "val": "val_QC_data.csv", "test": "test_QC_data.csv"}


def write_arc(root: Path, rows: dict | None = None, targets: list[str] | None = None) -> Path:
    """A tiny ARC tagging folder in the TagRec layout (exact header, shifted last columns like the real copy)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, items in (rows or ARC_ROWS).items():
        with (root / FILES[split]).open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(ARC_HEADER)
            for i, (label, question) in enumerate(items):
                w.writerow(
                    [f"{split}_{i}", i, 1, "B", 1, 0, "MCAS", 5, 2010, label, question, "", "Train", "Easy"]
                )
    with (root / "targets_ARC.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["targets"])
        w.writerows([t] for t in (targets or ARC_TARGETS))
    return root


def write_jsonl_tagging(root: Path) -> Path:
    """A tiny generic JSONL tagging folder: multi-label items and a tag file with one description."""
    root.mkdir(parents=True, exist_ok=True)
    tags = [
        {"id": "math_fractions", "text": "fractions: parts of a whole"},
        {"id": "math_geometry"},
        {"id": "bio_cell"},
    ]
    (root / "tags.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tags))
    splits = {
        "train": [
            {"id": "a", "text": "What is one half plus one third?", "tags": ["math_fractions"]},
            {
                "id": "b",
                "text": "Area of a triangle cut in half?",
                "tags": ["math_geometry", "math_fractions"],
            },
            {"id": "c", "text": "What does the nucleus of a cell hold?", "tags": ["bio_cell"]},
        ],
        "val": [{"id": "d", "text": "How many sides has a hexagon?", "tags": ["math_geometry"]}],
        "test": [{"id": "e", "text": "Which organelle makes energy?", "tags": ["bio_cell"]}],
    }
    for split, rows in splits.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def write_qa(path: Path, n: int = 12) -> Path:
    """SciQ-style JSONL QA pairs; two questions share an answer (a false negative for each other)."""
    rows = [
        {"question": f"What is thing number {i}?", "correct_answer": f"answer {i % 10}", "support": f"s{i}"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tag_text_rule():
    assert tag_text("LIFE_interdependency_food chain") == "life > interdependency > food chain"
    assert tag_text("MAT_properties of objects_TEXT", lowercase=False) == "MAT > properties of objects > TEXT"
    assert tag_text("a/b", path_sep="/", joiner=" | ") == "a | b"


def test_arc_loader_tags_candidates_and_buckets(tmp_path):
    dm = ArcTaggingDataModule(root=str(write_arc(tmp_path / "arc")), batch_size=4, eval_batch_size=2)
    # candidates come first and in file order; the training-only label joins after them
    assert dm.num_candidates == 4 and dm.tag_names[:4] == ARC_TARGETS
    assert dm.tag_names[4:] == ["TRAINONLY_magnets"] and dm.tag_texts[0] == "life > food chain"
    assert len(dm.splits["train"]) == 6  # no training row dropped
    assert dm.train_tag_counts == [2, 1, 2, 0, 1]
    assert dm.missing_gold == {"val": 1, "test": 0}  # the val label outside the candidates counts as a miss
    batch = next(iter(dm.test_dataloader()))
    assert batch["gold"].tolist() == [[0], [3]] and batch["ids"] == ["test_0", "test_1"]
    cands = list(dm.candidate_loader())
    assert sum(len(c["input_ids"]) for c in cands) == 4


def test_train_batch_dedupes_tags_and_marks_every_gold(tmp_path):
    dm = JsonlTaggingDataModule(root=str(write_jsonl_tagging(tmp_path / "j")), batch_size=3)
    rows = [{**dm.splits["train"][i], "index": i} for i in range(3)]
    batch = dm.collate_train(rows)
    # three queries; unique tags fractions, geometry, cell (fractions appears twice but is encoded once)
    assert batch["tag_ids"].tolist() == [0, 1, 2]
    assert batch["labels"].tolist() == [[True, False, False], [True, True, False], [False, False, True]]
    assert batch["tags"]["input_ids"].shape[0] == 3
    # dynamic padding: the longest query sets the width
    lengths = batch["query"]["attention_mask"].sum(dim=1)
    assert batch["query"]["input_ids"].shape[1] == int(lengths.max())
    assert dm.tag_texts[0] == "fractions: parts of a whole" and dm.tag_texts[1] == "math > geometry"


def test_augmentation_batches(tmp_path):
    root = write_jsonl_tagging(tmp_path / "j")
    rows = lambda dm: [{**dm.splits["train"][i], "index": i} for i in range(3)]  # noqa: E731
    h1 = JsonlTaggingDataModule(root=str(root), augmentation="h1", aug_ratio=1.0)
    b = h1.collate_train(rows(h1))
    assert b["query"]["input_ids"].shape[0] == 9  # 3 queries + (positive, hard negative) rows each
    sep = h1.tokenizer.sep_token_id
    assert all((ids == sep).sum() == 2 for ids in b["query"]["input_ids"][3:])  # "q [SEP] t [SEP]"
    assert (b["query"]["input_ids"][:3] == sep).sum() == 3
    assert b["labels"][3:].sum(dim=1).tolist() == b["labels"][[0, 0, 1, 1, 2, 2]].sum(dim=1).tolist()
    h2 = JsonlTaggingDataModule(root=str(root), augmentation="h2", aug_ratio=1.0)
    b = h2.collate_train(rows(h2))
    assert b["query"]["input_ids"].shape[0] == 3 and b["pair_labels"].tolist() == [1.0, 0.0] * 3
    assert b["pairs"]["token_type_ids"].max() == 1  # the tag is the second segment
    with pytest.raises(ValueError, match="augmentation"):
        JsonlTaggingDataModule(root=str(root), augmentation="h3")


def test_qa_pairs_share_answers_and_formats(tmp_path):
    dm = QAPairDataModule(path=str(write_qa(tmp_path / "qa.jsonl")), val_size=2, batch_size=12)
    assert len(dm.splits["val"]) == 2 and len(dm.splits["train"]) == 10
    assert dm.num_candidates == len({i["gold"][0] for i in dm.splits["val"]})
    train = dm.splits["train"]
    assert len({i["gold"][0] for i in train}) < len(train)  # shared answers are one "tag"
    b = dm.collate_train([{**r, "index": i} for i, r in enumerate(train)])
    assert int(b["labels"].sum()) == len(train) and b["labels"].shape[1] == len({i["gold"][0] for i in train})
    csv_path = tmp_path / "qa.csv"
    csv_path.write_text("question,answer,support\nWhat is H2O?,water,Water is H2O.\n")
    assert read_qa_pairs(csv_path, use_support=True) == [
        {"question": "What is H2O?", "answer": "water. Water is H2O."}
    ]
    arc = tmp_path / "arc.jsonl"
    arc.write_text(
        json.dumps({"question": {"stem": "Q?", "choices": [{"label": "A", "text": "x"}]}, "answerKey": "A"})
    )
    assert read_qa_pairs(arc) == [{"question": "Q?", "answer": "x"}]


def test_clear_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist.*targets_ARC.csv"):
        ArcTaggingDataModule(root=str(tmp_path / "nowhere"))
    root = write_arc(tmp_path / "no_targets")
    (root / "targets_ARC.csv").unlink()
    with pytest.raises(DataLayoutError, match="missing file .*targets_ARC.csv"):
        ArcTaggingDataModule(root=str(root))
    rows = {**ARC_ROWS, "test": [("NEWTAG_unheard of", "Which is new? (A) a (B) b")]}
    with pytest.raises(DataLayoutError, match="NEWTAG_unheard of.*neither candidate tags nor training tags"):
        ArcTaggingDataModule(root=str(write_arc(tmp_path / "unknown", rows)))
    rows = {**ARC_ROWS, "val": [("SPACE_stars", "  ")]}
    with pytest.raises(DataLayoutError, match="empty question text"):
        ArcTaggingDataModule(root=str(write_arc(tmp_path / "empty_q", rows)))
    rows = {**ARC_ROWS, "test": []}
    with pytest.raises(DataLayoutError, match="split is empty"):
        ArcTaggingDataModule(root=str(write_arc(tmp_path / "empty_split", rows)))
    j = write_jsonl_tagging(tmp_path / "j")
    (j / "val.jsonl").write_text(json.dumps({"text": "x?", "tags": ["chem_acids"]}) + "\n")
    with pytest.raises(DataLayoutError, match="chem_acids"):
        JsonlTaggingDataModule(root=str(j))
    (j / "tags.jsonl").unlink()
    with pytest.raises(DataLayoutError, match="missing file .*tags.jsonl"):
        JsonlTaggingDataModule(root=str(j))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(DataLayoutError, match="non-empty question and answer"):
        read_qa_pairs(bad)


def test_subsample_is_seeded(tmp_path):
    root = str(write_arc(tmp_path / "arc"))
    a = ArcTaggingDataModule(root=root, train_subsample=3, seed=1).splits["train"]
    b = ArcTaggingDataModule(root=root, train_subsample=3, seed=1).splits["train"]
    assert [i["id"] for i in a] == [i["id"] for i in b] and len(a) == 3
    assert torch.tensor([len(i["gold"]) for i in a]).min() == 1
