"""Question-generation data: the lmqg/qg_squad JSON-lines layout or plain CSV, tokenised here with dynamic padding.

Layouts under ``root`` (one file per split; ``train``, ``validation``, ``test``):

- ``lmqg`` (QG-Bench, e.g. ``lmqg/qg_squad``): ``{split}.jsonl`` in ``root`` or ``root/data/processed/``, one JSON
  object per line with ``question`` and ``paragraph_answer`` (the paragraph with the answer wrapped in ``<hl>``),
  usually also ``answer``, ``paragraph``, ``sentence``. A row without ``paragraph_answer`` but with ``paragraph``
  and ``answer`` gets one built (first occurrence of the answer highlighted).
- ``csv``: ``{split}.csv`` with a header holding ``question`` and either ``paragraph_answer`` or ``paragraph`` +
  ``answer`` (an optional ``item_id`` column names the rows).

The model input is ``prefix + paragraph_answer`` (lmqg's T5 recipe: prefix "generate question: "), the target the
gold question. ``<hl>`` is added to the tokenizer as a special token (the module adds the same token, so ids
agree). With a paraphrase cache (see ``scripts/paraphrase_refs.py``) every test item carries the reference set
``[gold] + first num_paraphrases paraphrases`` for multi-reference scoring; without one, ``[gold]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import DataLayoutError
from datamodules.files import read_csv_rows, read_jsonl
from datamodules.loaders import eval_dataloader

SPLITS = ("train", "validation", "test")
LAYOUTS = ("lmqg", "csv")
HIGHLIGHT = "<hl>"
LAYOUT_HELP = (
    "Expected layout: ROOT/{train,validation,test}.jsonl (or ROOT/data/processed/*.jsonl), the lmqg/qg_squad "
    "files from the Hugging Face Hub dataset lmqg/qg_squad (one JSON object per line with 'question' and "
    "'paragraph_answer', the answer wrapped in <hl>), or with layout: csv ROOT/{split}.csv with columns "
    "question + paragraph_answer (or paragraph + answer)."
)


def load_qg_tokenizer(path: str, highlight_token: str = HIGHLIGHT):
    """A local tokenizer (``packaged:all-MiniLM-L6-v2`` allowed) with the answer highlight as a special token."""
    from transformers import AutoTokenizer

    from lightning_modules.qg.metrics import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if highlight_token and highlight_token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [highlight_token]})
    if tokenizer.pad_token is None:
        raise ValueError(f"tokenizer {path!r} has no pad token; a seq2seq QG model needs one")
    return tokenizer


def split_file(root: str | Path, split: str, layout: str = "lmqg") -> Path:
    """The file holding ``split``, or a DataLayoutError naming what is missing and the expected layout."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"QG data folder {root} does not exist. {LAYOUT_HELP}")
    names = [f"{split}.jsonl", f"data/processed/{split}.jsonl"] if layout == "lmqg" else [f"{split}.csv"]
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataLayoutError(f"no {split} split under {root}: looked for {names}. {LAYOUT_HELP}")


def highlight_answer(paragraph: str, answer: str, token: str = HIGHLIGHT) -> str:
    """The paragraph with the first occurrence of the answer wrapped in ``token`` (lmqg's paragraph_answer)."""
    at = paragraph.find(answer)
    if not answer or at < 0:
        raise ValueError(f"answer {answer!r} does not occur in its paragraph")
    return f"{paragraph[:at]}{token} {answer} {token}{paragraph[at + len(answer) :]}"


def read_qg_split(
    root: str | Path, split: str, layout: str = "lmqg", highlight_token: str = HIGHLIGHT
) -> list[dict]:
    """Rows ``{item_id, question, paragraph_answer, answer?, paragraph?, sentence?}`` of one split, checked."""
    path = split_file(root, split, layout)
    rows = read_jsonl(path, LAYOUT_HELP) if layout == "lmqg" else read_csv_rows(path, LAYOUT_HELP)
    if not rows:
        raise DataLayoutError(f"{path} holds no rows: the {split} split is empty")
    out = []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 1}"
        if not isinstance(row, dict) or not str(row.get("question") or "").strip():
            raise DataLayoutError(f"{where} has no 'question' field. {LAYOUT_HELP}")
        pa = row.get("paragraph_answer")
        if not pa:
            if not row.get("paragraph") or not row.get("answer"):
                raise DataLayoutError(
                    f"{where} has neither 'paragraph_answer' nor both 'paragraph' and 'answer'. {LAYOUT_HELP}"
                )
            try:
                pa = highlight_answer(row["paragraph"], row["answer"], highlight_token)
            except ValueError as exc:
                raise DataLayoutError(f"{where}: {exc}") from exc
        item = {k: row[k] for k in ("answer", "paragraph", "sentence") if row.get(k) is not None}
        item.update(
            item_id=str(row.get("item_id") or f"{split}-{i}"), question=row["question"], paragraph_answer=pa
        )
        out.append(item)
    return out


def read_paraphrase_cache(path: str | Path) -> dict[str, dict]:
    """``{item_id: record}`` from a paraphrase cache (JSONL lines with item_id, reference, paraphrases)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"paraphrase cache {path} not found: make it first with scripts/paraphrase_refs.py "
            "(evaluation never calls a paraphrase model itself)"
        )
    records = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}:{n} is not valid JSON ({exc.msg}); an interrupted write? rerun "
                    "scripts/paraphrase_refs.py on it to repair and resume"
                ) from exc
            if not {"item_id", "reference", "paraphrases"} <= set(rec) or not isinstance(
                rec["paraphrases"], list
            ):
                raise ValueError(f"{path}:{n} lacks item_id/reference/paraphrases(list)")
            records[str(rec["item_id"])] = rec
    return records


def reference_sets(
    items: Sequence[dict], cache: dict[str, dict] | None, num_paraphrases: int | None = None
) -> list[list[str]]:
    """``[gold] + paraphrases[:num_paraphrases]`` per item (``[gold]`` without a cache); checks the cache matches."""
    out = []
    for item in items:
        refs = [item["question"]]
        if cache is not None:
            rec = cache.get(item["item_id"])
            if rec is None:
                raise KeyError(
                    f"item {item['item_id']!r} is not in the paraphrase cache; regenerate or resume it"
                )
            if rec["reference"].strip() != item["question"].strip():
                raise ValueError(
                    f"paraphrase cache entry {item['item_id']!r} paraphrases {rec['reference']!r}, but the data's "
                    f"gold question is {item['question']!r}: the cache was made from other data"
                )
            refs += list(rec["paraphrases"])[:num_paraphrases]
        out.append(refs)
    return out


class QGDataset(Dataset):
    """Items ``{source, target, references, item_id}`` (strings; tokenised in the collate function)."""

    def __init__(self, items: list[dict], references: list[list[str]], prefix: str) -> None:
        self.items, self.references, self.prefix = items, references, prefix

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        return {
            "source": self.prefix + item["paragraph_answer"],
            "target": item["question"],
            "references": self.references[i],
            "item_id": item["item_id"],
        }


class QGCollate:
    """Tokenise a list of items, padded to the longest in the batch; label padding is -100 (ignored by the loss)."""

    def __init__(self, tokenizer, max_source_length: int, max_target_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_source_length, self.max_target_length = max_source_length, max_target_length

    def __call__(self, items: list[dict]) -> dict:
        enc = self.tokenizer(
            [x["source"] for x in items],
            max_length=self.max_source_length,
            truncation=True,
            padding="longest",
            return_tensors="pt",
        )
        tgt = self.tokenizer(
            text_target=[x["target"] for x in items],
            max_length=self.max_target_length,
            truncation=True,
            padding="longest",
            return_tensors="pt",
        )
        labels = tgt["input_ids"].masked_fill(tgt["attention_mask"] == 0, -100)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": labels,
            "references": [x["references"] for x in items],
            "item_ids": [x["item_id"] for x in items],
        }


class QGDataModule(L.LightningDataModule):
    """SQuAD-style answer-aware question generation (lmqg/qg_squad or CSV), tokenised with dynamic padding.

    Args:
        root: folder with the split files (see the module docstring for the layouts).
        tokenizer: local tokenizer folder (the model's), or ``packaged:all-MiniLM-L6-v2`` for tiny demos.
        layout: ``lmqg`` or ``csv``.
        prefix: text put before the highlighted paragraph (lmqg's T5 recipe: "generate question: "; "" for BART).
        max_source_length / max_target_length: truncation lengths (lmqg: 512 / 32).
        paraphrase_cache: JSONL cache from ``scripts/paraphrase_refs.py``; test items then carry
            ``[gold] + num_paraphrases`` references (all cached ones when ``num_paraphrases`` is None).
        limit: use only the first ``limit`` rows of each split (quick runs).
    """

    def __init__(
        self,
        root: str,
        tokenizer: str,
        layout: str = "lmqg",
        prefix: str = "generate question: ",
        highlight_token: str = HIGHLIGHT,
        max_source_length: int = 512,
        max_target_length: int = 32,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        paraphrase_cache: str | None = None,
        num_paraphrases: int | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        self.save_hyperparameters()
        self.root, self.layout = root, layout
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, QGDataset] = {}
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_qg_tokenizer(self.hparams.tokenizer, self.hparams.highlight_token)
        return self._tokenizer

    def _load(self, split: str) -> QGDataset:
        if split not in self.datasets:
            items = read_qg_split(self.root, split, self.layout, self.hparams.highlight_token)
            if self.hparams.limit:
                items = items[: self.hparams.limit]
            cache = None
            if self.hparams.paraphrase_cache and split == "test":
                cache = read_paraphrase_cache(self.hparams.paraphrase_cache)
            refs = reference_sets(items, cache, self.hparams.num_paraphrases)
            self.datasets[split] = QGDataset(items, refs, self.hparams.prefix)
        return self.datasets[split]

    def setup(self, stage: str | None = None) -> None:
        wanted = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",)}
        for split in wanted.get(stage, ("test",) if stage == "predict" else SPLITS):
            self._load(split)

    def _collate(self) -> QGCollate:
        return QGCollate(self.tokenizer, self.hparams.max_source_length, self.hparams.max_target_length)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self._load("train"),
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            collate_fn=self._collate(),
            persistent_workers=self.num_workers > 0,
        )

    def _eval_loader(self, split: str) -> DataLoader:
        loader = eval_dataloader(self._load(split), self.eval_batch_size, self.num_workers)
        loader.collate_fn = self._collate()
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("validation")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
