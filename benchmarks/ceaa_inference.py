"""Inference speed of CEAA's bi-encoder (cached tag embeddings) vs a cross-encoder re-ranker over all tags.

    python benchmarks/ceaa_inference.py [--data /path/to/arc_tagging] [--questions 128] [--cross-questions 2]
        [--model packaged:all-MiniLM-L6-v2] [--threads 2] [--out docs/results/ceaa/inference.json]

Both paths run the same `BiEncoderTagger` code the CLI uses, back to back in one process:

- bi-encoder: the candidate tags are embedded once (`refresh_tag_cache`, timed separately), then each batch of
  questions costs one encoder pass plus a matrix product against the cache (`score`);
- cross-encoder over all tags: every (question, candidate) pair goes through the encoder with the relevance head
  (`rerank` with ``rerank_top_n = -1``), i.e. ``num_candidates`` transformer passes per question.

The ratio of questions per second is the efficiency argument of the paper (inference stays bi-encoder-cheap). With
``--data`` the questions are the first test questions of the ARC layout and the candidates its 351 distinct tags; without it,
a synthetic JSONL folder with 352 tag paths and templated questions of similar length is written to a temp dir.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules.ceaa import ArcTaggingDataModule, JsonlTaggingDataModule  # noqa: E402
from lightning_modules.ceaa.module import BiEncoderTagger  # noqa: E402


def synthetic_folder(folder: Path, num_tags: int = 352, num_questions: int = 256) -> Path:
    """Tag paths ``subject_topic_skill`` and ~100-token multiple-choice questions in the JSONL layout."""
    rng = random.Random(0)
    words = [
        "energy",
        "matter",
        "plant",
        "animal",
        "cell",
        "force",
        "motion",
        "earth",
        "rock",
        "water",
        "weather",
        "star",
        "planet",
        "light",
        "sound",
        "heat",
    ]
    tags = [f"{rng.choice(words)}_{rng.choice(words)} {i}_{rng.choice(words)}" for i in range(num_tags)]
    (folder / "tags.jsonl").write_text("".join(json.dumps({"id": t}) + "\n" for t in tags))
    for split in ("train", "val", "test"):
        rows = []
        for i in range(num_questions):
            stem = " ".join(rng.choice(words) for _ in range(40))
            opts = " ".join(f"({c}) " + " ".join(rng.choice(words) for _ in range(8)) for c in "ABCD")
            rows.append({"id": f"{split}{i}", "text": f"{stem}? {opts}", "tags": [rng.choice(tags)]})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def timed(fn, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="ARC tagging folder (TagRec layout); synthetic data when omitted")
    p.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    p.add_argument("--questions", type=int, default=128, help="questions timed for the bi-encoder")
    p.add_argument("--cross-questions", type=int, default=2, help="questions timed for the cross-encoder")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-text-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write the numbers as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    common = dict(tokenizer=args.model, max_text_length=args.max_text_length, eval_batch_size=args.batch_size)
    tmp = None
    if args.data:
        dm = ArcTaggingDataModule(root=args.data, **common)
    else:
        tmp = tempfile.TemporaryDirectory()
        dm = JsonlTaggingDataModule(root=str(synthetic_folder(Path(tmp.name))), **common)
    model = BiEncoderTagger(model_path=args.model, eval_tag_batch_size=args.batch_size).eval()
    items = dm.splits["test"]
    n = min(args.questions, len(items))
    batches = [
        dm.collate_eval([{**items[i], "index": i} for i in range(s, min(s + args.batch_size, n))])
        for s in range(0, n, args.batch_size)
    ]
    with torch.no_grad():
        cache_s = timed(lambda: model.refresh_tag_cache(dm))
        model.score(batches[0]["query"])  # warm-up
        bi_s = timed(lambda: [model.score(b["query"]).topk(10, dim=1) for b in batches])
        model.eval_args.rerank_top_n = -1
        cross_batch = dm.collate_eval([{**items[i], "index": i} for i in range(args.cross_questions)])
        cross_s = timed(lambda: model.rerank(model.score(cross_batch["query"]), cross_batch["texts"], dm))
    result = {
        "data": "ARC test questions" if args.data else "synthetic",
        "model": args.model,
        "candidates": dm.num_candidates,
        "threads": args.threads,
        "machine": f"{platform.machine()} CPU, {args.threads} threads (shared 2-core machine)",
        "tag_cache_seconds": round(cache_s, 3),
        "bi_encoder_questions": n,
        "bi_encoder_questions_per_s": round(n / bi_s, 2),
        "cross_encoder_questions": args.cross_questions,
        "cross_encoder_questions_per_s": round(args.cross_questions / cross_s, 4),
    }
    result["speedup"] = round(
        result["bi_encoder_questions_per_s"] / result["cross_encoder_questions_per_s"], 1
    )
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
