"""Sentences per second of each QG metric on CPU, single reference and against 1 + k references (max and native).

    python benchmarks/qg_metrics_speed.py --input /data/qgbench_human_eval/final_result.csv --n 500 --refs 5
    python benchmarks/qg_metrics_speed.py --n 500          # synthetic questions when no file is given

Candidates and gold references come from a QG-Bench-style CSV (``prediction``, ``reference_raw``) or, without one,
from a seeded template generator. Multi-reference timing uses k rule-made pseudo-references per item (word order
and synonym swaps of the gold question): they exercise the same code paths as cached LLM paraphrases. Each timing
is the best of ``--repeats`` runs after one warm-up call (which also loads BERTScore's encoder); threads are
limited to ``--threads``. Prints a Markdown table and, with ``--out``, writes it.
"""

from __future__ import annotations

import argparse
import csv
import platform
import random
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.qg.metrics import METRICS, QGScorer  # noqa: E402

SWAPS = {
    "What": "Which",
    "When": "At what time",
    "built": "constructed",
    "famous": "well known",
    "city": "town",
}


def synthetic(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    things = ["castle", "bridge", "museum", "river", "festival", "city", "library", "treaty"]
    verbs = ["built", "opened", "signed", "founded", "destroyed", "renamed"]
    golds, preds = [], []
    for _ in range(n):
        thing, verb = rng.choice(things), rng.choice(verbs)
        golds.append(f"When was the {thing} {verb} and by whom?")
        preds.append(f"What year was the {rng.choice(things)} {verb}?")
    return preds, golds


def pseudo_references(gold: str, k: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words = gold.rstrip("?").split()
    out = []
    for i in range(k):
        w = [SWAPS.get(x, x) if rng.random() < 0.5 else x for x in words]
        if i % 2 and len(w) > 3:
            w[1], w[2] = w[2], w[1]
        out.append(" ".join(w) + "?")
    return out


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=None, help="QG-Bench final_result.csv (optional)")
    p.add_argument("--n", type=int, default=500, help="candidates to score")
    p.add_argument(
        "--refs", type=int, default=5, help="pseudo-references per item for the multi-reference rows"
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the Markdown table here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.input:
        with open(args.input, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))[: args.n]
        preds, golds = [r["prediction"] for r in rows], [r["reference_raw"] for r in rows]
    else:
        preds, golds = synthetic(args.n, args.seed)
    single = [[g] for g in golds]
    multi = [[g, *pseudo_references(g, args.refs, args.seed + i)] for i, g in enumerate(golds)]
    results = []
    for metric in args.metrics:
        scorer = QGScorer([metric], verbose=False)
        if metric not in scorer.metrics:
            results.append({"metric": metric, "note": scorer.skipped[metric]})
            continue
        row = {"metric": metric}
        row["single"] = len(preds) / best_time(
            lambda s=scorer: s.sentence_scores(preds, single, "native"), args.repeats
        )
        row["multi_max"] = len(preds) / best_time(
            lambda s=scorer: s.sentence_scores(preds, multi, "max"), args.repeats
        )
        row["multi_native"] = len(preds) / best_time(
            lambda s=scorer: s.sentence_scores(preds, multi, "native"), args.repeats
        )
        results.append(row)
        print(row, flush=True)
    lines = [
        f"Sentences per second ({len(preds)} candidates; multi = 1 gold + {args.refs} pseudo-references; "
        f"best of {args.repeats}; torch threads {args.threads}; {platform.machine()} CPU, "
        f"Python {platform.python_version()}; source: {'QG-Bench CSV' if args.input else 'synthetic'}).",
        "",
        "| metric | single reference | multi, max | multi, native |",
        "|---|---|---|---|",
    ]
    for r in results:
        if "note" in r:
            lines.append(f"| {r['metric']} | not run: {r['note']} | | |")
        else:
            lines.append(
                f"| {r['metric']} | {r['single']:.0f} | {r['multi_max']:.0f} | {r['multi_native']:.0f} |"
            )
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
