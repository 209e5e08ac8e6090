"""QG datamodule: lmqg/qg_squad and CSV layouts, tokenisation with dynamic padding, reference sets, clear errors."""

import csv
import json

import pytest

from datamodules.errors import DataLayoutError
from datamodules.qg import (
    QGDataModule,
    highlight_answer,
    read_paraphrase_cache,
    read_qg_split,
    reference_sets,
)
from tests.qg_fixtures import qg_rows, write_qg_squad

TOKENIZER = "packaged:all-MiniLM-L6-v2"


def test_lmqg_layout_batches_with_dynamic_padding(tmp_path):
    root = write_qg_squad(tmp_path / "qg")
    dm = QGDataModule(str(root), TOKENIZER, batch_size=4, eval_batch_size=3, max_source_length=64)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    # padded to the longest source in the batch, not to max_source_length
    assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1] < 64
    assert (batch["labels"] == -100).sum() == (batch["labels"].numel() - (batch["labels"] != -100).sum())
    hl = dm.tokenizer.convert_tokens_to_ids("<hl>")
    assert (batch["input_ids"] == hl).sum(1).tolist() == [
        2,
        2,
        2,
        2,
    ]  # the answer is highlighted in every input
    text = dm.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert text.startswith("[CLS] generate question :")
    dm.setup("test")
    test_batch = next(iter(dm.test_dataloader()))
    assert test_batch["references"] == [[r["question"]] for r in qg_rows(3, offset=20)]
    assert test_batch["item_ids"] == ["test-0", "test-1", "test-2"]


def test_csv_layout_builds_paragraph_answer(tmp_path):
    for split in ("train", "validation", "test"):
        with (tmp_path / f"{split}.csv").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["question", "paragraph", "answer"])
            w.writeheader()
            w.writerow({"question": "Who?", "paragraph": "Ada wrote it in 1843.", "answer": "Ada"})
    rows = read_qg_split(tmp_path, "test", layout="csv")
    assert rows[0]["paragraph_answer"] == "<hl> Ada <hl> wrote it in 1843."
    assert highlight_answer("in 1843 .", "1843") == "in <hl> 1843 <hl> ."


def test_clear_errors_for_missing_files_fields_and_empty_splits(tmp_path):
    with pytest.raises(DataLayoutError, match="does not exist"):
        read_qg_split(tmp_path / "nope", "train")
    with pytest.raises(DataLayoutError, match="no test split.*lmqg/qg_squad"):
        read_qg_split(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(DataLayoutError, match="empty"):
        read_qg_split(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text(json.dumps({"question": "Q?", "paragraph": "p"}) + "\n")
    with pytest.raises(DataLayoutError, match="paragraph_answer"):
        read_qg_split(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text(json.dumps({"paragraph_answer": "p <hl> a <hl>"}) + "\n")
    with pytest.raises(DataLayoutError, match="'question'"):
        read_qg_split(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text("{not json\n")
    with pytest.raises(DataLayoutError, match="not valid JSON"):
        read_qg_split(tmp_path, "test")
    (tmp_path / "test.jsonl").write_text(
        json.dumps({"question": "Q?", "paragraph": "p", "answer": "zz"}) + "\n"
    )
    with pytest.raises(DataLayoutError, match="does not occur"):
        read_qg_split(tmp_path, "test")


def test_reference_sets_from_a_paraphrase_cache(tmp_path):
    items = [
        {"item_id": "test-0", "question": "When was it built?"},
        {"item_id": "test-1", "question": "Who?"},
    ]
    cache = tmp_path / "para.jsonl"
    cache.write_text(
        "\n".join(
            json.dumps({"item_id": f"test-{i}", "reference": it["question"], "paraphrases": ["a", "b", "c"]})
            for i, it in enumerate(items)
        )
        + "\n"
    )
    records = read_paraphrase_cache(cache)
    assert reference_sets(items, records, 2) == [["When was it built?", "a", "b"], ["Who?", "a", "b"]]
    assert reference_sets(items, None) == [["When was it built?"], ["Who?"]]
    with pytest.raises(ValueError, match="other data"):
        reference_sets([{"item_id": "test-0", "question": "Different?"}], records)
    with pytest.raises(KeyError, match="not in the paraphrase cache"):
        reference_sets([{"item_id": "test-9", "question": "Q"}], records)
    with pytest.raises(FileNotFoundError, match="paraphrase_refs.py"):
        read_paraphrase_cache(tmp_path / "missing.jsonl")
