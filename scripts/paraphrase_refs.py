"""Make N paraphrases of every gold question once and cache them as JSON lines (QG-eval's pseudo-references).

    python scripts/paraphrase_refs.py -c configs/qg/paraphrase.yaml --qg-root /data/qg_squad --split test \
        --output paraphrases.jsonl
    python scripts/paraphrase_refs.py -c configs/qg/paraphrase.yaml --csv questions.csv --question-column question \
        --output paraphrases.jsonl

Input: a QG dataset split (the layouts of `datamodules.qg`; item ids ``{split}-{row}`` as the datamodule uses) or a
CSV of questions (ids from ``--id-column``, else ``row-{i}``; optional answer/context columns feed the prompt).

Generators (``generator.type`` in the config):
- ``openai``: any OpenAI-compatible chat-completions endpoint (``base_url`` + ``/chat/completions``), ``model``,
  the key read from the environment variable named by ``api_key_env`` (none sent when it is null). Standard
  library HTTP (urllib). Timeouts, connection errors, HTTP 429 and 5xx are retried with exponential backoff
  (``backoff_s * 2**attempt``, capped at ``max_backoff_s``) up to ``max_retries`` times; other HTTP errors and
  malformed replies stop at once with a message naming the item and showing the reply.
- ``hf``: a local Hugging Face model folder, ``kind: seq2seq`` (each of N sampled sequences is a paraphrase) or
  ``kind: causal`` (N sampled continuations of the prompt, first line of each).

The prompt is a template in the config (``{question}``, ``{answer}``, ``{context}``, ``{n}``); the paper's own
prompt is not known (reconstruction). A reply is split into lines, list numbering/bullets removed.

Cache (one line per item, written and flushed as soon as the item is done):
``{"item_id", "reference", "paraphrases": [...], "generator": {"type", "model", "prompt_id", "temperature",
"seed"}, "dropped": k}``. Rerunning the same command resumes: items already in the cache are skipped, a last line
cut off by a crash is removed (with a warning), and a cache made with another generator/prompt is refused.
Filters (logged per item as ``dropped``): exact duplicates and paraphrases equal to the reference (normalised).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class ParaphraseError(RuntimeError):
    """Paraphrase generation failed (endpoint down after retries, refused request, bad config)."""


class ReplyFormatError(ParaphraseError):
    """The generator answered, but not with what was asked for."""


# ---------------------------------------------------------------------------------------------- prompts and replies
def render_prompt(template: str, n: int, question: str, answer: str = "", context: str = "") -> str:
    """The config's prompt template filled in (fields: n, question, answer, context)."""
    try:
        return template.format(n=n, question=question, answer=answer or "", context=context or "")
    except (KeyError, IndexError) as exc:
        raise ParaphraseError(
            f"prompt template uses an unknown field {exc}; allowed: {{n}}, {{question}}, {{answer}}, {{context}} "
            "(write literal braces as {{ and }})"
        ) from exc


_BULLET = re.compile(r"^\s*(?:\d+[.):]|[-*\u2022])\s*")


def parse_paraphrases(text: str, min_count: int, where: str = "") -> list[str]:
    """One paraphrase per non-empty line, numbering and bullets removed; at least ``min_count`` of them."""
    if not isinstance(text, str):
        raise ReplyFormatError(f"{where}: reply content is {type(text).__name__}, expected text")
    lines = [_BULLET.sub("", line).strip().strip('"').strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < min_count:
        raise ReplyFormatError(
            f"{where}: expected at least {min_count} paraphrases, one per line, got {len(lines)}: {text[:300]!r}"
        )
    return lines


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def filter_paraphrases(reference: str, paraphrases: list[str], drop_duplicates: bool, drop_reference: bool):
    """Remove duplicates and copies of the reference (compared lower-cased, punctuation-free); return (kept, dropped)."""
    seen = {_norm(reference)} if drop_reference else set()
    kept = []
    for p in paraphrases:
        key = _norm(p)
        if (drop_duplicates or drop_reference) and key in seen:
            continue
        if drop_duplicates:
            seen.add(key)
        kept.append(p)
    return kept, len(paraphrases) - len(kept)


# ---------------------------------------------------------------------------------------------- generators
class OpenAIChatGenerator:
    """An OpenAI-compatible ``/chat/completions`` endpoint; returns the reply's text (retries with backoff)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        temperature: float = 0.7,
        seed: int | None = 0,
        max_tokens: int = 512,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.temperature, self.seed, self.max_tokens = model, temperature, seed, max_tokens
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.timeout_s, self.sleep = timeout_s, sleep
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise ParaphraseError(
                    f"the API key variable {api_key_env} is not set; export it, or set generator.api_key_env: null "
                    "for an endpoint without authentication"
                )

    def _request(self, prompt: str) -> bytes:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return resp.read()

    def __call__(self, prompt: str, n: int | None = None, where: str = "") -> str:
        """The reply text for ``prompt`` (``n`` is in the prompt itself)."""
        attempt = 0
        while True:
            try:
                raw = self._request(prompt)
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode(errors="replace")
                if exc.code not in RETRY_STATUS:
                    raise ParaphraseError(
                        f"{where}: {self.url} refused the request: HTTP {exc.code} {detail!r}"
                    ) from exc
                last = f"HTTP {exc.code} {detail!r}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if attempt >= self.max_retries:
                raise ParaphraseError(
                    f"{where}: {self.url} failed after {attempt + 1} tries; last error: {last}"
                )
            delay = min(self.backoff_s * 2**attempt, self.max_backoff_s)
            print(
                f"{where}: {last}; retrying in {delay:.2f}s ({attempt + 1}/{self.max_retries})",
                file=sys.stderr,
            )
            self.sleep(delay)
            attempt += 1
        try:
            reply = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ReplyFormatError(f"{where}: the endpoint's reply is not JSON: {raw[:300]!r}") from exc
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ReplyFormatError(
                f"{where}: the reply has no choices[0].message.content (not a chat-completions reply?): "
                f"{json.dumps(reply)[:300]}"
            ) from exc
        if not isinstance(content, str):
            raise ReplyFormatError(f"{where}: choices[0].message.content is not text: {content!r}"[:400])
        return content


class HFGenerator:
    """A local Hugging Face model (``seq2seq`` or ``causal``) sampling N paraphrases for a prompt."""

    def __init__(
        self,
        model_path: str,
        kind: str = "seq2seq",
        temperature: float = 0.7,
        top_p: float = 0.95,
        max_new_tokens: int = 48,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from lightning_modules.qg.metrics import resolve_model_path

        if kind not in ("seq2seq", "causal"):
            raise ParaphraseError(f"generator.kind must be seq2seq or causal, got {kind!r}")
        path = resolve_model_path(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        cls = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
        self.model = cls.from_pretrained(path).to(device).eval()
        self.kind, self.temperature, self.top_p = kind, temperature, top_p
        self.max_new_tokens, self.seed, self.device = max_new_tokens, seed, device

    def __call__(self, prompt: str, n: int, where: str = "") -> list[str]:
        import torch

        torch.manual_seed(self.seed)
        enc = self.tokenizer(prompt, return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                num_return_sequences=n,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        if self.kind == "causal":
            out = out[:, enc["input_ids"].shape[1] :]
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        return [(t.strip().splitlines() or [""])[0].strip() for t in texts]


def build_generator(config: dict):
    """The generator the config names, with its cache metadata."""
    gen = dict(config.get("generator") or {})
    kind = gen.pop("type", None)
    temperature = float(config.get("temperature", 0.7))
    seed = config.get("seed", 0)
    if kind == "openai":
        for key in ("base_url", "model"):
            if not gen.get(key):
                raise ParaphraseError(f"generator.{key} is required for the openai generator")
        meta_model = gen["model"]
        gen.pop("kind", None)
        gen.pop("model_path", None)
        generator = OpenAIChatGenerator(temperature=temperature, seed=seed, **gen)
    elif kind == "hf":
        if not gen.get("model_path"):
            raise ParaphraseError(
                "generator.model_path (a local model folder) is required for the hf generator"
            )
        meta_model = gen["model_path"]
        allowed = {"model_path", "kind", "top_p", "max_new_tokens", "device"}
        generator = HFGenerator(
            temperature=temperature, seed=int(seed or 0), **{k: v for k, v in gen.items() if k in allowed}
        )
    else:
        raise ParaphraseError(f"generator.type must be 'openai' or 'hf', got {kind!r}")
    meta = {
        "type": kind,
        "model": meta_model,
        "prompt_id": config.get("prompt_id", "custom"),
        "temperature": temperature,
        "seed": seed,
    }
    return generator, meta


# ---------------------------------------------------------------------------------------------- items and cache
def load_items(args) -> list[dict]:
    """``{item_id, reference, answer, context}`` from a QG split or a CSV of questions."""
    if args.qg_root:
        from datamodules.qg import read_qg_split

        rows = read_qg_split(args.qg_root, args.split, args.layout)
        return [
            {
                "item_id": r["item_id"],
                "reference": r["question"],
                "answer": r.get("answer", ""),
                "context": r.get("sentence") or r.get("paragraph") or "",
            }
            for r in rows
        ]
    path = Path(args.csv)
    if not path.is_file():
        raise FileNotFoundError(f"questions CSV {path} not found")
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    if args.question_column not in rows[0]:
        raise KeyError(f"{path} has no column {args.question_column!r}; columns: {list(rows[0])}")
    items = []
    for i, r in enumerate(rows):
        items.append(
            {
                "item_id": str(r[args.id_column]) if args.id_column else f"row-{i}",
                "reference": r[args.question_column],
                "answer": r.get(args.answer_column, "") if args.answer_column else "",
                "context": r.get(args.context_column, "") if args.context_column else "",
            }
        )
    if len({x["item_id"] for x in items}) != len(items):
        raise ValueError(f"item ids in {path} are not unique")
    return items


def read_cache_for_resume(path: Path) -> dict[str, dict]:
    """Records already in the cache; a last line cut off mid-write is removed (the item is redone)."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline (an unfinished line, or b"")
    records: dict[str, dict] = {}
    good_bytes = 0
    for n, line in enumerate(complete, 1):
        if line.strip():
            try:
                rec = json.loads(line)
                records[str(rec["item_id"])] = rec
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                if n == len(complete) and not tail:
                    print(
                        f"warning: {path}:{n} is an unfinished record; it is dropped and redone",
                        file=sys.stderr,
                    )
                    break
                raise ValueError(f"{path}:{n} is not a cache record ({exc}); the cache is corrupt") from exc
        good_bytes += len(line) + 1
    if tail.strip():
        print(f"warning: {path} ends in an unfinished record; it is dropped and redone", file=sys.stderr)
    if good_bytes != len(data):
        with path.open("r+b") as fh:
            fh.truncate(good_bytes)
    return records


def generate_cache(
    items: list[dict], config: dict, output: Path, generator=None, meta: dict | None = None
) -> dict:
    """Paraphrase every item not yet in ``output``; return counts ``{done, skipped, total}``."""
    if generator is None:
        generator, meta = build_generator(config)
    n = int(config.get("num_paraphrases", 10))
    min_count = int(config.get("min_paraphrases", n))
    template = config.get("prompt")
    if not template:
        raise ParaphraseError("the config has no prompt template ('prompt')")
    filters = config.get("filters") or {}
    output.parent.mkdir(parents=True, exist_ok=True)
    done = read_cache_for_resume(output)
    for item_id, rec in done.items():
        if rec.get("generator") != meta:
            raise ParaphraseError(
                f"{output} was made with generator {rec.get('generator')} (item {item_id}), not {meta}: "
                "write a new cache instead of mixing generators or prompts in one"
            )
    ids = {x["item_id"] for x in items}
    stale = sorted(set(done) - ids)
    if stale:
        raise ParaphraseError(
            f"{output} holds items not in this input (e.g. {stale[:3]}): is it another dataset's?"
        )
    new = 0
    with output.open("a", encoding="utf-8") as fh:
        for item in items:
            if item["item_id"] in done:
                continue
            where = f"item {item['item_id']}"
            prompt = render_prompt(
                template, n, item["reference"], item.get("answer", ""), item.get("context", "")
            )
            reply = generator(prompt, n, where=where)
            if isinstance(reply, list):  # a local model: one paraphrase per sampled sequence
                paraphrases = [x for x in reply if x]
                if len(paraphrases) < min_count:
                    raise ReplyFormatError(
                        f"{where}: the model gave {len(paraphrases)} non-empty paraphrases, need {min_count}"
                    )
            else:  # an endpoint: one reply text, one paraphrase per line
                paraphrases = parse_paraphrases(reply, min_count, where)
            paraphrases = paraphrases[:n]
            kept, dropped = filter_paraphrases(
                item["reference"],
                paraphrases,
                bool(filters.get("drop_duplicates", True)),
                bool(filters.get("drop_equal_to_reference", True)),
            )
            record = {
                "item_id": item["item_id"],
                "reference": item["reference"],
                "paraphrases": kept,
                "generator": meta,
                "dropped": dropped,
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
            done[item["item_id"]] = record
            new += 1
    return {"done": new, "skipped": len(items) - new, "total": len(items)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "-c", "--config", required=True, help="YAML: prompt, num_paraphrases, temperature, seed, generator"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--qg-root", help="QG dataset folder (datamodules.qg layouts)")
    src.add_argument("--csv", help="CSV of questions")
    p.add_argument("--split", default="test")
    p.add_argument("--layout", default="lmqg", choices=("lmqg", "csv"))
    p.add_argument("--question-column", default="question")
    p.add_argument("--id-column", default=None)
    p.add_argument("--answer-column", default=None)
    p.add_argument("--context-column", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N items")
    p.add_argument("--output", required=True, help="JSONL cache (created or resumed)")
    args = p.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    items = load_items(args)[: args.limit]
    counts = generate_cache(items, config, Path(args.output))
    print(
        f"{args.output}: {counts['done']} items paraphrased, {counts['skipped']} already cached, {counts['total']} in all"
    )
    return counts


if __name__ == "__main__":
    main()
