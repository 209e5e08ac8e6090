"""BiEncoderTagger: tagging as retrieval (CEAA, Findings of ACL 2023; the loss and augmentation are reconstructed).

Questions and tag texts are embedded separately (one shared transformer, or separate towers) with mean pooling and
L2 normalisation; a question's score for a tag is their cosine divided by ``temperature``. Training minimises the
multi-label in-batch InfoNCE of `losses.multilabel_info_nce` over the batch's unique tags (other gold tags of the same
question are masked out of the denominator). With the datamodule's ``h2`` augmentation, the batch also carries
cross-encoder inputs ``[CLS] q [SEP] t [SEP]`` and a linear relevance head on their pooled vector adds
``cross_weight * BCE``; the head is not used to rank unless ``rerank_top_n`` asks for cross-encoder re-ranking (the
slow baseline). ``h1`` needs nothing here: its extra rows are ordinary queries.

Evaluation embeds every candidate tag once per validation/test/predict epoch (``tag_cache``; dropped as soon as
training resumes and never saved in checkpoints), scores each question against all candidates with one matrix
product, and logs ``{stage}/R@k``, ``P@k``, ``nDCG@k``, ``MRR`` (torchmetrics.retrieval) and ``R@k/{bucket}`` by the
gold tag's training frequency (see `metrics`). ``predict`` writes the top-k tags with scores as JSONL.

Datamodule contract (read through ``trainer.datamodule``; see ``datamodules/ceaa.py``): ``tag_names``,
``tag_texts``, ``num_candidates``, ``train_tag_counts``, ``candidate_loader()``, ``tokenize_pairs()``, and
optionally ``missing_gold`` (eval gold tags outside the candidates, logged).

DDP: with ``gather_across_devices`` the query and tag embeddings and gold ids are all-gathered (with gradients)
before the loss, tags deduplicated by id across ranks, so every rank computes the loss of the single-process global
batch; evaluation metrics are torchmetrics states, synchronised before they are computed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.data import AttributeDict
from torch import nn

from lightning_modules.ceaa.losses import multilabel_info_nce
from lightning_modules.ceaa.metrics import BucketRecall, retrieval_collection, retrieval_rows
from lightning_modules.ceaa.nets import TextEncoder
from lightning_modules.common import check_finite_loss

ENCODER_PREFIXES = ("query_encoder.", "tag_encoder.", "cross_head.")
# init arguments that only affect evaluation and prediction (kept out of the checkpoint's hyperparameters)
EVAL_ARGS = ("rerank_top_n", "predict_top_k", "predict_threshold", "predict_output", "eval_tag_batch_size")


def gather_padded(x: torch.Tensor, pad_value: float = 0, sync_grads: bool = False) -> torch.Tensor:
    """All-gather tensors whose first dimension differs across ranks: pad to the largest, gather, concatenate.

    Returns ``[world * max_rows, ...]`` (padding rows included; callers mask them). ``sync_grads`` uses
    ``torch.distributed.nn.functional.all_gather``, whose backward sends every rank's gradient back to its source.
    """
    import torch.distributed as dist

    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    rows = int(max(int(s) for s in sizes))
    if x.shape[0] < rows:
        pad = x.new_full((rows - x.shape[0], *x.shape[1:]), pad_value)
        x = torch.cat([x, pad])
    if sync_grads:
        from torch.distributed.nn.functional import all_gather

        parts = all_gather(x)
    else:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x)
    return torch.cat(list(parts))


def global_batch(
    q: torch.Tensor, t: torch.Tensor, gold: torch.Tensor, tag_ids: torch.Tensor, gather: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, tags and the bool gold mask ``[queries, tags]`` of the batch, or, with ``gather``, of the global batch.

    Under DDP (``gather``) every rank's query and tag embeddings are all-gathered with gradients, padded gold ids and
    tag ids without; tags are deduplicated by global id (first copy kept), so the loss every rank computes is the
    single-process loss of the global batch, with other gold tags masked wherever they came from.
    """
    if gather:
        q_valid = gather_padded(torch.ones(q.shape[0], dtype=torch.bool, device=q.device)).bool()
        q = gather_padded(q, 0.0, sync_grads=True)[q_valid]
        width = gather_padded(torch.tensor([gold.shape[1]], device=gold.device)).max()
        gold = F.pad(gold, (0, int(width) - gold.shape[1]), value=-1)
        gold = gather_padded(gold, -1)[q_valid]
        all_ids = gather_padded(tag_ids, -1)
        t = gather_padded(t, 0.0, sync_grads=True)
        keep = torch.zeros_like(all_ids, dtype=torch.bool)
        seen: set[int] = set()
        for j, tid in enumerate(all_ids.tolist()):  # first copy of each tag id; padding (-1) dropped
            if tid >= 0 and tid not in seen:
                seen.add(tid)
                keep[j] = True
        t, tag_ids = t[keep], all_ids[keep]
    labels = (gold.unsqueeze(2) == tag_ids.view(1, 1, -1)).any(dim=1)
    return q, t, labels


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    """Write rows to a temporary file next to ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


class BiEncoderTagger(L.LightningModule):
    """Bi-encoder tag retrieval with in-batch negatives, false-negative masking and a tag-embedding cache.

    Args:
        model_path: pretrained encoder (local folder, hub id in the local cache, or ``packaged:all-MiniLM-L6-v2``); or
        model_config: a transformers config dict with ``model_type`` for a randomly initialised encoder (tests).
        shared_encoder: one transformer for questions and tags (True) or two towers initialised alike (False).
        pooling: ``mean`` (default, sentence-transformers) or ``cls``.
        temperature: softmax temperature tau of the InfoNCE (0.05 = scale 20, the sentence-transformers default).
        cross_weight: lambda of the H2 relevance BCE (used only when batches carry ``pairs``).
        rerank_top_n: 0 ranks with the bi-encoder only; N > 0 re-scores each question's top-N with the cross-encoder
            head (the re-ranking baseline); -1 re-scores every candidate.
        lr, weight_decay, warmup_ratio: AdamW with linear warmup over ``warmup_ratio`` of the steps, then linear decay.
        ks: cut-offs of R@k / P@k.
        gather_across_devices: all-gather embeddings before the loss under DDP (negatives = the global batch).
        train_dropout: train with the encoder's dropout on (False: off, deterministic; reconstructed choice).
        init_from: a checkpoint (Lightning ``.ckpt`` or a plain state dict) whose encoder weights start this run (QA
            transfer: ``--model.init_args.init_from <qa_transfer ckpt>``).
        predict_top_k / predict_threshold / predict_output: ``predict`` writes each question's top-k tags (only those
            scoring >= threshold, when given) to ``predict_output`` (default ``<log_dir>/ceaa_predictions.jsonl``).
    """

    def __init__(
        self,
        model_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        shared_encoder: bool = True,
        pooling: str = "mean",
        temperature: float = 0.05,
        cross_weight: float = 1.0,
        rerank_top_n: int = 0,
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        ks: tuple[int, ...] = (1, 3, 5, 10),
        gather_across_devices: bool = True,
        init_from: str | None = None,
        predict_top_k: int = 10,
        predict_threshold: float | None = None,
        predict_output: str | None = None,
        eval_tag_batch_size: int = 256,
        train_dropout: bool = False,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive cut-offs, got {ks}")
        # Evaluation/prediction settings are not checkpoint hyperparameters: `cli.py test/predict --ckpt_path` would
        # otherwise let the checkpoint's values override the command line.
        self.save_hyperparameters(ignore=list(EVAL_ARGS))
        self.eval_args = AttributeDict(
            rerank_top_n=rerank_top_n,
            predict_top_k=predict_top_k,
            predict_threshold=predict_threshold,
            predict_output=predict_output,
            eval_tag_batch_size=eval_tag_batch_size,
        )
        self.query_encoder = TextEncoder(model_path, model_config, pooling)
        self.tag_encoder = None if shared_encoder else TextEncoder(model_path, model_config, pooling)
        if self.tag_encoder is not None:
            self.tag_encoder.load_state_dict(self.query_encoder.state_dict())  # same start for both towers
        self.cross_head = nn.Linear(self.query_encoder.hidden_size, 1)
        self.ks = tuple(int(k) for k in ks)
        self.tag_cache: torch.Tensor | None = None
        self._predictions: list[dict] = []
        if init_from:
            self.load_encoder_weights(init_from)

    # ------------------------------------------------------------------ weights
    def load_encoder_weights(self, path: str) -> None:
        """Copy encoder (and cross-head) weights from a checkpoint; shapes must match, nothing else is loaded."""
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"init_from checkpoint {path} does not exist (give the QA-transfer run's .ckpt)"
            )
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unreadable for any reason: one clear message
            raise ValueError(
                f"init_from checkpoint {path} cannot be read ({type(exc).__name__}: {exc})"
            ) from exc
        state = blob.get("state_dict", blob)
        source = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
        if not any(k.startswith("query_encoder.") for k in source):
            raise ValueError(
                f"init_from checkpoint {path} holds no query_encoder weights (not a BiEncoderTagger run)"
            )
        if self.tag_encoder is not None and not any(k.startswith("tag_encoder.") for k in source):
            source.update(  # shared-encoder checkpoint into separate towers: both start from it
                {
                    "tag_encoder." + k[len("query_encoder.") :]: v
                    for k, v in source.items()
                    if k.startswith("query_")
                }
            )
        own = self.state_dict()
        bad = [k for k, v in source.items() if k in own and own[k].shape != v.shape]
        if bad:
            raise ValueError(
                f"init_from checkpoint {path}: encoder shapes differ for {bad[:3]} (different model?)"
            )
        self.load_state_dict({k: v for k, v in source.items() if k in own}, strict=False)

    # ------------------------------------------------------------------ encoding and scoring
    def encode_queries(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.query_encoder(inputs)

    def encode_tags(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.tag_encoder or self.query_encoder)(inputs)

    def cross_logits(self, pairs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Relevance logits of cross-encoder inputs ``[CLS] q [SEP] t [SEP]`` (the H2 head; re-ranking)."""
        return self.cross_head(self.query_encoder.pooled(pairs)).squeeze(-1)

    def _datamodule(self):
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or not hasattr(dm, "candidate_loader"):
            raise RuntimeError(
                "BiEncoderTagger needs a datamodule from datamodules/ceaa.py (tag texts, candidates)"
            )
        return dm

    @torch.no_grad()
    def embed_candidates(self, datamodule=None) -> torch.Tensor:
        """Embeddings ``[num_candidates, dim]`` of every candidate tag (encoder put in eval mode meanwhile)."""
        dm = datamodule or self._datamodule()
        modes = {m: m.training for m in self.modules()}
        self.eval()
        parts = [
            self.encode_tags({k: v.to(self.device) for k, v in batch.items()})
            for batch in dm.candidate_loader(self.eval_args.eval_tag_batch_size)
        ]
        for m, mode in modes.items():  # restore each module's own mode
            m.train(mode)
        return torch.cat(parts)

    def refresh_tag_cache(self, datamodule=None) -> None:
        self.tag_cache = self.embed_candidates(datamodule)

    def score(
        self, query: dict[str, torch.Tensor], tag_embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Bi-encoder scores ``[questions, candidates]`` (cosine / temperature) against cached or given embeddings."""
        tags = self.tag_cache if tag_embeddings is None else tag_embeddings
        if tags is None:
            raise RuntimeError("no tag embeddings: call refresh_tag_cache() or pass tag_embeddings")
        return self.encode_queries(query) @ tags.T / self.hparams.temperature

    @torch.no_grad()
    def rerank(self, scores: torch.Tensor, texts: list[str], datamodule=None) -> torch.Tensor:
        """Re-score each question's top ``rerank_top_n`` candidates (all with -1) with the cross-encoder head.

        Re-scored candidates are placed above the others (cross logit + a margin over every bi-encoder score), so
        the top-N order is the cross-encoder's and the rest keep the bi-encoder's order.
        """
        dm = datamodule or self._datamodule()
        n = self.eval_args.rerank_top_n
        n = scores.shape[1] if n < 0 else min(n, scores.shape[1])
        top = scores.topk(n, dim=1).indices
        q_texts = [t for t in texts for _ in range(n)]
        t_texts = [dm.tag_texts[int(j)] for j in top.flatten()]
        logits, step = [], self.eval_args.eval_tag_batch_size
        for s in range(0, len(q_texts), step):
            enc = dm.tokenize_pairs(q_texts[s : s + step], t_texts[s : s + step])
            logits.append(self.cross_logits({k: v.to(self.device) for k, v in enc.items()}))
        cross = torch.cat(logits).view_as(top).to(scores.dtype)
        out = scores.clone()
        margin = scores.max() - cross.min() + 1.0
        out.scatter_(1, top, cross + margin)
        return out

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.tag_cache = None  # weights are changing: the cache is stale
        q = self.encode_queries(batch["query"])
        t = self.encode_tags(batch["tags"])
        gather = self.hparams.gather_across_devices and self.trainer.world_size > 1
        q, t, labels = global_batch(q, t, batch["gold"], batch["tag_ids"], gather)
        loss = multilabel_info_nce(q @ t.T / self.hparams.temperature, labels)
        self.log("train/info_nce", loss, prog_bar=True, batch_size=labels.shape[0])
        if "pairs" in batch:
            bce = F.binary_cross_entropy_with_logits(self.cross_logits(batch["pairs"]), batch["pair_labels"])
            self.log("train/cross_bce", bce, batch_size=batch["pair_labels"].shape[0])
            loss = loss + self.hparams.cross_weight * bce
        check_finite_loss(loss, self.global_step)
        self.log("train/loss", loss, batch_size=labels.shape[0])
        return loss

    def configure_optimizers(self):
        from transformers import get_linear_schedule_with_warmup

        decay = [p for n, p in self.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in self.named_parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = get_linear_schedule_with_warmup(opt, int(self.hparams.warmup_ratio * total), total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def setup(self, stage: str) -> None:
        dm = self._datamodule()
        vocab = int(self.query_encoder.transformer.config.vocab_size)
        if len(dm.tokenizer) > vocab:
            raise ValueError(
                f"the datamodule's tokenizer has {len(dm.tokenizer)} tokens but the encoder's vocabulary only {vocab}: "
                "use the model's own tokenizer (data.init_args.tokenizer)"
            )
        self.metrics = nn.ModuleDict(
            {
                s: nn.ModuleDict(
                    {
                        "overall": retrieval_collection(self.ks),
                        "bucket": BucketRecall(dm.train_tag_counts, self.ks),
                    }
                )
                for s in ("val", "test")
            }
        ).to(self.device)

    def _eval_start(self) -> None:
        self.refresh_tag_cache()

    on_validation_epoch_start = _eval_start
    on_test_epoch_start = _eval_start

    def on_train_epoch_start(self) -> None:
        """Drop the stale cache; dropout on or off as ``train_dropout`` says, for pretrained and random encoders alike.

        (transformers returns pretrained models in eval mode and Lightning keeps submodule modes, so without this a
        pretrained encoder would train without dropout and a randomly initialised one with it.)
        """
        self.tag_cache = None
        self.train(self.hparams.train_dropout)

    def _eval_step(self, batch: dict, stage: str) -> None:
        scores = self.score(batch["query"])
        if self.eval_args.rerank_top_n:
            scores = self.rerank(scores, batch["texts"])
        preds, target, indexes = retrieval_rows(scores, batch["gold"], batch["index"])
        self.metrics[stage]["overall"].update(preds, target, indexes=indexes)
        self.metrics[stage]["bucket"].update(scores, batch["gold"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _eval_end(self, stage: str) -> None:
        values = dict(self.metrics[stage]["overall"].compute())
        values.update(self.metrics[stage]["bucket"].compute())
        missing = getattr(self._datamodule(), "missing_gold", {}).get(stage)
        if missing is not None:
            values["missing_gold"] = torch.tensor(float(missing))
        self.log_dict({f"{stage}/{k}": v.float() for k, v in values.items()}, sync_dist=False)
        for metric in self.metrics[stage].values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # ------------------------------------------------------------------ prediction
    def on_predict_epoch_start(self) -> None:
        self.refresh_tag_cache()
        self._predictions = []

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        dm = self._datamodule()
        scores = self.score(batch["query"])
        if self.eval_args.rerank_top_n:
            scores = self.rerank(scores, batch["texts"])
        k = min(self.eval_args.predict_top_k, scores.shape[1])
        values, idx = scores.topk(k, dim=1)
        rows = []
        for qid, text, vals, ids in zip(
            batch["ids"], batch["texts"], values.tolist(), idx.tolist(), strict=True
        ):
            tags = [
                {"tag": dm.tag_names[j], "text": dm.tag_texts[j], "score": round(v, 6)}
                for v, j in zip(vals, ids, strict=True)
                if self.eval_args.predict_threshold is None or v >= self.eval_args.predict_threshold
            ]
            rows.append({"id": qid, "text": text, "tags": tags})
        self._predictions.extend(rows)
        return rows

    def on_predict_epoch_end(self) -> None:
        rows = self._predictions
        if self.trainer.world_size > 1:
            parts: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, rows)
            rows = [r for part in parts for r in part]
        log_dir = self.trainer.log_dir  # every rank asks (a broadcast under DDP)
        path = (
            Path(self.eval_args.predict_output)
            if self.eval_args.predict_output
            else Path(log_dir or ".") / "ceaa_predictions.jsonl"
        )
        if self.global_rank == 0:
            write_jsonl_atomic(path, rows)
        self.prediction_file = path
