"""QGModule: answer-aware question generation with a transformers seq2seq model (T5, BART, ...).

Training minimises token cross-entropy with label smoothing (lmqg's recipe uses 0.15) on the gold question. Test
and predict decode with beam search. ``test`` scores the generated questions against the single gold reference and,
when the datamodule's test items carry more references (a paraphrase cache), against the whole reference set:

- ``test/{bleu4,rougeL,meteor,bertscore}``: single reference (BLEU-4 is sacrebleu corpus BLEU; the others are
  means of sentence scores, as QG-Bench reports them);
- ``test/multi_{aggregation}/{metric}``: the same against ``[gold] + paraphrases`` (see `metrics.QGScorer`).

DDP: every rank generates for its own share of the test set (the datamodule's unrepeated sampler gives each item to
exactly one rank); the strings are gathered to every rank before any metric is computed, so every rank computes and
logs the same full-test-set numbers. The predictions are written once, to ``predictions_test.jsonl`` in the log dir.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict

from datamodules.qg import HIGHLIGHT, load_qg_tokenizer
from lightning_modules.common import check_finite_loss
from lightning_modules.qg.metrics import AGGREGATIONS, METRICS, PACKAGED_MINILM, QGScorer, resolve_model_path

# init arguments that only affect generation and scoring (kept out of the checkpoint's hyperparameters)
EVAL_ARGS = (
    "num_beams",
    "max_new_tokens",
    "length_penalty",
    "no_repeat_ngram_size",
    "eval_metrics",
    "aggregations",
    "lowercase",
    "bertscore_model",
    "bertscore_layers",
    "wordnet_dir",
)


def build_seq2seq(model_path: str | None, model_config: dict | None, tokenizer):
    """A pretrained model from a local folder, or a randomly initialised one from a config dict (``model_type``)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    if (model_path is None) == (model_config is None):
        raise ValueError(
            "give exactly one of model_path (a local pretrained folder) or model_config (random init)"
        )
    if model_path is not None:
        model = AutoModelForSeq2SeqLM.from_pretrained(resolve_model_path(model_path))
    else:
        cfg = dict(model_config)
        if "model_type" not in cfg:
            raise ValueError(
                "model_config needs a 'model_type', e.g. {'model_type': 't5', 'd_model': 32, ...}"
            )
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        cfg.setdefault("vocab_size", len(tokenizer))
        cfg.setdefault("pad_token_id", tokenizer.pad_token_id)
        cfg.setdefault("eos_token_id", eos)
        cfg.setdefault("decoder_start_token_id", tokenizer.pad_token_id)
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        model = AutoModelForSeq2SeqLM.from_config(config)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


class QGModule(L.LightningModule):
    """Seq2seq question generation; multi-reference BLEU-4 / ROUGE-L / METEOR / BERTScore at test time.

    Args:
        tokenizer: local tokenizer folder, the same as the datamodule's (default: ``model_path``);
            ``packaged:all-MiniLM-L6-v2`` for tiny demos.
        model_path: local pretrained seq2seq folder (e.g. a t5-large copy); or
        model_config: a transformers config dict with ``model_type`` for a randomly initialised model.
        lr, weight_decay, label_smoothing: AdamW and loss settings (lmqg T5-large: 5e-5, -, 0.15).
        num_beams, max_new_tokens, length_penalty, no_repeat_ngram_size: generation settings (beam search).
        eval_metrics: subset of ``bleu4, rougeL, meteor, bertscore``; METEOR is skipped with a message when WordNet
            is absent.
        aggregations: multi-reference aggregations logged when test items have several references.
        lowercase: score lower-cased text (QG-Bench normalises case).
        bertscore_model / bertscore_layers: local BERTScore encoder and layer (default: packaged MiniLM, last).
        wordnet_dir: WordNet 3.0 folder for METEOR (else nltk data or /usr/share/wordnet; "off" disables).
    """

    def __init__(
        self,
        tokenizer: str | None = None,
        model_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        highlight_token: str = HIGHLIGHT,
        lr: float = 5e-5,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.15,
        num_beams: int = 4,
        max_new_tokens: int = 32,
        length_penalty: float = 1.0,
        no_repeat_ngram_size: int = 0,
        eval_metrics: tuple[str, ...] = METRICS,
        aggregations: tuple[str, ...] = AGGREGATIONS,
        lowercase: bool = True,
        bertscore_model: str = PACKAGED_MINILM,
        bertscore_layers: int | None = None,
        wordnet_dir: str | None = None,
    ) -> None:
        super().__init__()
        bad = [a for a in aggregations if a not in AGGREGATIONS] + [
            m for m in eval_metrics if m not in METRICS
        ]
        if bad:
            raise ValueError(f"unknown aggregations/metrics {bad}: choose from {AGGREGATIONS} and {METRICS}")
        if tokenizer is None and model_path is None:
            raise ValueError("give a tokenizer folder (or a model_path whose folder holds the tokenizer)")
        # Generation and scoring settings are not checkpoint hyperparameters: `cli.py test/predict --ckpt_path`
        # would otherwise let the checkpoint's values override the command line (e.g. --model.init_args.num_beams).
        self.save_hyperparameters(ignore=list(EVAL_ARGS))
        self.eval_args = AttributeDict(
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            length_penalty=length_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            eval_metrics=tuple(eval_metrics),
            aggregations=tuple(aggregations),
            lowercase=lowercase,
            bertscore_model=bertscore_model,
            bertscore_layers=bertscore_layers,
            wordnet_dir=wordnet_dir,
        )
        self.tokenizer = load_qg_tokenizer(tokenizer or model_path, highlight_token)
        self.model = build_seq2seq(model_path, model_config, self.tokenizer)
        self._outputs: list[dict] = []
        self._scorer: QGScorer | None = None

    def setup(self, stage: str) -> None:
        """Refuse a datamodule whose tokenizer differs from the model's (ids would silently mean other tokens)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        theirs = getattr(datamodule, "tokenizer", None)
        if theirs is not None and theirs.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(
                f"the datamodule's tokenizer ({datamodule.hparams.get('tokenizer')!r}) differs from the model's "
                f"({self.hparams.tokenizer or self.hparams.model_path!r}): give both the same folder"
            )

    # ------------------------------------------------------------------ training
    def _loss(self, batch: dict) -> torch.Tensor:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        )
        logits = out.logits
        return F.cross_entropy(
            logits.reshape(-1, logits.size(-1)),
            batch["labels"].reshape(-1),
            ignore_index=-100,
            label_smoothing=self.hparams.label_smoothing,
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        check_finite_loss(loss, self.global_step)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["item_ids"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log(
            "val/loss", self._loss(batch), prog_bar=True, sync_dist=True, batch_size=len(batch["item_ids"])
        )

    def configure_optimizers(self):
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Beam-search questions for a tokenised batch, decoded to plain strings."""
        hp = self.eval_args
        out = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            num_beams=hp.num_beams,
            max_new_tokens=hp.max_new_tokens,
            length_penalty=hp.length_penalty,
            no_repeat_ngram_size=hp.no_repeat_ngram_size,
            early_stopping=hp.num_beams > 1,
            do_sample=False,
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def predict_step(self, batch: dict, batch_idx: int) -> list[str]:
        return self.generate(batch["input_ids"], batch["attention_mask"])

    def on_test_epoch_start(self) -> None:
        self._outputs = []

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch), sync_dist=True, batch_size=len(batch["item_ids"]))
        preds = self.generate(batch["input_ids"], batch["attention_mask"])
        for pred, refs, item_id in zip(preds, batch["references"], batch["item_ids"], strict=True):
            self._outputs.append({"item_id": item_id, "prediction": pred, "references": list(refs)})

    def scorer(self) -> QGScorer:
        if self._scorer is None:
            hp = self.eval_args
            self._scorer = QGScorer(
                hp.eval_metrics,
                lowercase=hp.lowercase,
                bertscore_model=hp.bertscore_model,
                bertscore_layers=hp.bertscore_layers,
                wordnet_dir=hp.wordnet_dir,
                device=str(self.device),
                verbose=self.global_rank == 0,
            )
        return self._scorer

    def on_test_epoch_end(self) -> None:
        rows = gather_objects(self._outputs)
        self._outputs = []
        if not rows:
            return
        log_dir = self.trainer.log_dir  # a broadcast from rank 0 under DDP: every rank must ask
        preds = [r["prediction"] for r in rows]
        refs = [r["references"] for r in rows]
        for name, value in qg_test_metrics(self.scorer(), preds, refs, self.eval_args.aggregations).items():
            self.log(name, value, rank_zero_only=False)
        if self.global_rank == 0 and log_dir:
            write_jsonl_atomic(Path(log_dir) / "predictions_test.jsonl", rows)


def qg_test_metrics(
    scorer: QGScorer, preds: list[str], refs: list[list[str]], aggregations: tuple[str, ...]
) -> dict:
    """Single-reference scores (``test/<metric>``) and, with several references, ``test/multi_<agg>/<metric>``."""
    out = {}
    single = [r[:1] for r in refs]
    for metric, value in scorer.corpus_scores(preds, single, "native").items():
        out[f"test/{metric}"] = value
    if any(len(r) > 1 for r in refs):
        for agg in aggregations:
            for metric, value in scorer.corpus_scores(preds, refs, agg).items():
                out[f"test/multi_{agg}/{metric}"] = value
    return out


def gather_objects(local: list) -> list:
    """Concatenate every rank's list (all ranks receive the whole list); the list itself without DDP."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(local)
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    return [x for part in parts for x in part]


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """Write JSON lines to a temporary file, then rename it into place (never half-written)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
