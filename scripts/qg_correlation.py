"""Score generated questions against one or many references and correlate the scores with human ratings.

    python scripts/qg_correlation.py --input /data/qgbench_human_eval/final_result.csv --layout qgbench \
        --out docs/results/qg --bootstrap 1000 --seed 0
    python scripts/qg_correlation.py --input rated.jsonl --prediction-column prediction \
        --references-column references --criteria fluency relevance --paraphrases cache.jsonl \
        --num-paraphrases 0 1 2 5 10 --out results/

Input: CSV or JSONL, one rated candidate per row. ``--layout qgbench`` reads QG-Bench's manual-evaluation file
(``final_result.csv``: ``prediction``, gold ``reference_raw``, ratings ``correctness`` (answerability),
``grammaticality``, ``understandability``, systems in ``model``, the authors' own ``Bleu_4``/``ROUGE_L``/``METEOR``/
``BERTScore`` columns). Otherwise name the columns; ``--references-column`` may hold a list (JSONL, or a JSON list in
CSV) whose first element is the gold reference.

References: the gold one, plus the first k paraphrases from ``--paraphrases`` (a `scripts/paraphrase_refs.py`
cache, matched by item id or by reference text) for every k in ``--num-paraphrases`` (0 = single reference), each
under every ``--aggregations`` (max, mean, native).

Correlations (scipy): Pearson, Spearman, Kendall tau-b of each metric with each criterion over all rated items
(instance level; items with a missing rating are dropped, never imputed), with percentile bootstrap 95% CIs over
items (the same resamples for every row, so multi- minus single-reference differences get a paired CI), plus
system-level correlations over per-system means when a system column exists.

Writes to ``--out``: ``correlations.{csv,md}``, ``system_level.csv``, with ``--save-scores`` ``scores.csv``, ``corr_vs_refs.png``
(correlation against the number of references) and, when the authors' metric columns are present,
``crosscheck.{csv,md}`` (our scores against theirs, item by item).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_modules.qg.metrics import AGGREGATIONS, METRICS, PACKAGED_MINILM, QGScorer  # noqa: E402

QGBENCH = {
    "prediction": "prediction",
    "reference": "reference_raw",
    "criteria": ["correctness", "grammaticality", "understandability"],
    "system": "model",
    "theirs": {"bleu4": "Bleu_4", "rougeL": "ROUGE_L", "meteor": "METEOR", "bertscore": "BERTScore"},
}
METHODS = ("pearson", "spearman", "kendall")


# ---------------------------------------------------------------------------------------------- input
def read_rows(path: Path) -> list[dict]:
    """Rows of a CSV (header) or JSONL file."""
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} not found")
    if path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def _references(row: dict, column: str) -> list[str]:
    value = row[column]
    if isinstance(value, str) and value.strip().startswith("["):
        value = json.loads(value)
    refs = [value] if isinstance(value, str) else list(value)
    if not refs or not all(isinstance(r, str) and r.strip() for r in refs):
        raise ValueError(f"row has an empty or non-text reference in {column!r}: {value!r}")
    return refs


def _rating(value) -> float:
    try:
        return float(value) if value not in (None, "") else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def load_table(args) -> dict:
    """Predictions, gold reference sets, ratings per criterion, systems, the authors' scores (if any)."""
    rows = read_rows(Path(args.input))
    spec = (
        dict(QGBENCH)
        if args.layout == "qgbench"
        else {
            "prediction": args.prediction_column,
            "reference": args.references_column,
            "criteria": args.criteria,
            "system": args.system_column,
            "theirs": {},
        }
    )
    if args.criteria and args.layout == "qgbench":
        spec["criteria"] = args.criteria
    needed = [spec["prediction"], spec["reference"], *spec["criteria"]]
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise KeyError(f"{args.input} lacks columns {missing}; it has {list(rows[0])}")
    if not spec["criteria"]:
        raise ValueError("name at least one human-rating column (--criteria)")
    table = {
        "predictions": [str(r[spec["prediction"]]) for r in rows],
        "references": [_references(r, spec["reference"]) for r in rows],
        "ratings": {c: np.array([_rating(r[c]) for r in rows]) for c in spec["criteria"]},
        "systems": [r[spec["system"]] for r in rows]
        if spec["system"] and spec["system"] in rows[0]
        else None,
        "item_ids": [str(r[args.id_column]) for r in rows] if args.id_column else None,
        "theirs": {
            m: np.array([_rating(r[c]) for r in rows]) for m, c in spec["theirs"].items() if c in rows[0]
        },
    }
    return table


def paraphrase_lookup(path: str | None, table: dict, by: str) -> list[list[str]] | None:
    """Each row's cached paraphrases (matched by item id or by the gold reference text)."""
    if not path:
        return None
    from datamodules.qg import read_paraphrase_cache

    cache = read_paraphrase_cache(path)
    if by == "item_id":
        if table["item_ids"] is None:
            raise ValueError("--match-by item_id needs --id-column")
        keys, index = table["item_ids"], cache
    else:
        keys = [refs[0] for refs in table["references"]]
        index = {rec["reference"].strip(): rec for rec in cache.values()}
    out = []
    for key in keys:
        rec = index.get(key.strip() if by == "reference" else key)
        if rec is None:
            raise KeyError(
                f"no cached paraphrases for {by} {key!r}: complete the cache with scripts/paraphrase_refs.py"
            )
        out.append(list(rec["paraphrases"]))
    return out


# ---------------------------------------------------------------------------------------------- statistics
def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(-1) / den


def correlation(x: np.ndarray, y: np.ndarray, method: str) -> tuple[float, float]:
    """(coefficient, p-value) with scipy."""
    fn = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}[method]
    res = fn(x, y)
    return float(res[0]), float(res[1])


def bootstrap(x: np.ndarray, y: np.ndarray, method: str, idx: np.ndarray) -> np.ndarray:
    """The correlation on each bootstrap resample ``idx`` (B, n) of the items."""
    if method == "pearson":
        return _rowwise_pearson(x[idx], y[idx])
    if method == "spearman":
        return _rowwise_pearson(stats.rankdata(x[idx], axis=1), stats.rankdata(y[idx], axis=1))
    return np.array([stats.kendalltau(x[i], y[i])[0] for i in idx])


def ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def correlate(
    variants: dict[tuple[str, int, str], np.ndarray],
    ratings: dict[str, np.ndarray],
    n_boot: int,
    seed: int,
    methods=METHODS,
) -> list[dict]:
    """One row per (metric, number of references, aggregation, criterion, method), with CIs and paired deltas."""
    rows = []
    rng = np.random.default_rng(seed)
    for criterion, human in ratings.items():
        keep = ~np.isnan(human)
        n = int(keep.sum())
        idx = rng.integers(0, n, size=(n_boot, n)) if n_boot else None
        boots: dict = {}
        for (metric, n_refs, agg), scores in variants.items():
            x, y = scores[keep], human[keep]
            for method in methods:
                value, p = correlation(x, y, method)
                row = {
                    "metric": metric,
                    "n_refs": n_refs,
                    "aggregation": agg,
                    "criterion": criterion,
                    "method": method,
                    "value": value,
                    "p_value": p,
                    "n": n,
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                    "delta_vs_single": np.nan,
                    "delta_ci_low": np.nan,
                    "delta_ci_high": np.nan,
                }
                if idx is not None:
                    b = bootstrap(x, y, method, idx)
                    boots[(metric, n_refs, agg, method)] = b
                    row["ci_low"], row["ci_high"] = ci(b)
                    single = boots.get((metric, 1, "single", method))
                    if n_refs > 1 and single is not None:
                        row["delta_ci_low"], row["delta_ci_high"] = ci(b - single)
                single_row = next(
                    (
                        r
                        for r in rows
                        if (r["metric"], r["n_refs"], r["criterion"], r["method"])
                        == (metric, 1, criterion, method)
                    ),
                    None,
                )
                if n_refs > 1 and single_row is not None:
                    row["delta_vs_single"] = value - single_row["value"]
                rows.append(row)
    return rows


def system_level(variants, ratings, systems: list[str]) -> list[dict]:
    """Correlations over per-system means (no CI: few systems)."""
    names = sorted(set(systems))
    if len(names) < 3:
        return []
    groups = [np.array([s == name for s in systems]) for name in names]
    rows = []
    for criterion, human in ratings.items():
        h = np.array([np.nanmean(human[g]) for g in groups])
        for (metric, n_refs, agg), scores in variants.items():
            m = np.array([scores[g].mean() for g in groups])
            for method in METHODS:
                value, p = correlation(m, h, method)
                rows.append(
                    {
                        "metric": metric,
                        "n_refs": n_refs,
                        "aggregation": agg,
                        "criterion": criterion,
                        "method": method,
                        "value": value,
                        "p_value": p,
                        "n": len(names),
                    }
                )
    return rows


# ---------------------------------------------------------------------------------------------- output
def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def markdown_table(rows: list[dict], header: str) -> str:
    """A criterion x metric table per (method, refs, aggregation): 'value [lo, hi]'."""
    lines = [header, ""]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    for method in dict.fromkeys(r["method"] for r in rows):
        for refs, agg in dict.fromkeys((r["n_refs"], r["aggregation"]) for r in rows):
            sel = [
                r for r in rows if r["method"] == method and r["n_refs"] == refs and r["aggregation"] == agg
            ]
            if not sel:
                continue
            title = "single reference" if refs == 1 else f"{refs} references ({agg})"
            if agg == "authors":
                title = "the authors' precomputed columns (QG-Bench), single reference"
            lines += [
                f"**{method}, {title}**",
                "",
                "| criterion | " + " | ".join(metrics) + " |",
                "|---|" + "---|" * len(metrics),
            ]
            for criterion in dict.fromkeys(r["criterion"] for r in sel):
                cells = []
                for metric in metrics:
                    r = next((r for r in sel if r["criterion"] == criterion and r["metric"] == metric), None)
                    if r is None:
                        cells.append("")
                    elif np.isnan(r.get("ci_low", np.nan)):
                        cells.append(_fmt(r["value"]))
                    else:
                        cells.append(f"{_fmt(r['value'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]")
                lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, method: str = "spearman") -> None:
    """Correlation against the number of references: one panel per criterion, one line per metric/aggregation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    criteria = list(dict.fromkeys(r["criterion"] for r in rows))
    fig, axes = plt.subplots(1, len(criteria), figsize=(4.2 * len(criteria), 3.6), squeeze=False)
    for ax, criterion in zip(axes[0], criteria, strict=True):
        sel = [r for r in rows if r["criterion"] == criterion and r["method"] == method]
        for metric in dict.fromkeys(r["metric"] for r in sel):
            single = [r for r in sel if r["metric"] == metric and r["n_refs"] == 1]
            for agg in [a for a in dict.fromkeys(r["aggregation"] for r in sel) if a != "single"] or [
                "single"
            ]:
                line = single + [
                    r for r in sel if r["metric"] == metric and r["aggregation"] == agg and r["n_refs"] > 1
                ]
                line.sort(key=lambda r: r["n_refs"])
                x = [r["n_refs"] for r in line]
                y = [r["value"] for r in line]
                err = np.array([[r["value"] - r["ci_low"], r["ci_high"] - r["value"]] for r in line]).T
                label = metric if agg == "single" else f"{metric} ({agg})"
                ax.errorbar(
                    x, y, yerr=None if np.isnan(err).any() else err, marker="o", capsize=3, label=label
                )
        ax.set_xticks(sorted({r["n_refs"] for r in sel}))
        ax.set_title(criterion)
        ax.set_xlabel("number of references")
        ax.set_ylabel(f"{method} correlation")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True)
    p.add_argument("--layout", choices=("qgbench", "generic"), default="generic")
    p.add_argument("--prediction-column", default="prediction")
    p.add_argument("--references-column", default="references")
    p.add_argument("--criteria", nargs="+", default=None, help="human-rating columns")
    p.add_argument("--system-column", default=None)
    p.add_argument("--id-column", default=None)
    p.add_argument("--paraphrases", default=None, help="paraphrase cache (JSONL)")
    p.add_argument("--match-by", choices=("reference", "item_id"), default="reference")
    p.add_argument(
        "--num-paraphrases", type=int, nargs="+", default=[0], help="k values; 0 = single reference"
    )
    p.add_argument("--aggregations", nargs="+", default=["max"], choices=AGGREGATIONS)
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument(
        "--no-lowercase", action="store_true", help="score case-sensitively (default: lower-cased)"
    )
    p.add_argument("--bertscore-model", default=PACKAGED_MINILM)
    p.add_argument("--bertscore-layers", type=int, default=None)
    p.add_argument("--wordnet-dir", default=None, help="WordNet 3.0 folder for METEOR; 'off' disables METEOR")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: no CIs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="only the first N rows (quick checks)")
    p.add_argument("--save-scores", action="store_true", help="also write per-item scores (scores.csv)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    started = time.time()

    table = load_table(args)
    if args.limit:
        n = args.limit
        table = {
            k: (
                v[:n]
                if isinstance(v, list)
                else {c: a[:n] for c, a in v.items()}
                if isinstance(v, dict)
                else v
            )
            for k, v in table.items()
        }
    paraphrases = paraphrase_lookup(args.paraphrases, table, args.match_by)
    if paraphrases is None and any(k > 0 for k in args.num_paraphrases):
        print("no --paraphrases cache given: multi-reference rows need one; scoring single references only")
    scorer = QGScorer(
        args.metrics,
        lowercase=not args.no_lowercase,
        bertscore_model=args.bertscore_model,
        bertscore_layers=args.bertscore_layers,
        wordnet_dir=args.wordnet_dir,
    )
    preds = table["predictions"]
    variants: dict[tuple[str, int, str], np.ndarray] = {}
    single = [refs[:1] for refs in table["references"]]
    for metric, scores in scorer.sentence_scores(preds, single, "native").items():
        variants[(metric, 1, "single")] = scores
    for k in sorted(set(args.num_paraphrases) - {0}):
        if paraphrases is None:
            break
        refs = [gold[:1] + para[:k] for gold, para in zip(table["references"], paraphrases, strict=True)]
        n_refs = 1 + k
        for agg in args.aggregations:
            for metric, scores in scorer.sentence_scores(preds, refs, agg).items():
                variants[(metric, n_refs, agg)] = scores

    # the authors' own precomputed single-reference scores (QG-Bench columns), correlated the same way
    authors = {(m, 1, "authors"): v for m, v in table["theirs"].items() if not np.isnan(v).any()}

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = correlate({**variants, **authors}, table["ratings"], args.bootstrap, args.seed)
    write_csv(out / "correlations.csv", rows)
    sys_rows = system_level(variants, table["ratings"], table["systems"]) if table["systems"] else []
    write_csv(out / "system_level.csv", sys_rows)
    if args.save_scores:
        score_rows = [
            {"prediction": p_, **{f"{m}@{r}:{a}": float(v[i]) for (m, r, a), v in variants.items()}}
            for i, p_ in enumerate(preds)
        ]
        write_csv(out / "scores.csv", score_rows)
    plot([r for r in rows if r["aggregation"] != "authors"], out / "corr_vs_refs.png")

    cross = []
    for metric, theirs in table["theirs"].items():
        ours = variants.get((metric, 1, "single"))
        if ours is None:
            continue
        keep = ~np.isnan(theirs)
        cross.append(
            {
                "metric": metric,
                "pearson": correlation(ours[keep], theirs[keep], "pearson")[0],
                "spearman": correlation(ours[keep], theirs[keep], "spearman")[0],
                "mean_ours": float(ours[keep].mean()),
                "mean_theirs": float(theirs[keep].mean()),
                "n": int(keep.sum()),
            }
        )
    write_csv(out / "crosscheck.csv", cross)

    meta = [
        f"Input: `{Path(args.input).name}` ({len(preds)} rated questions); seed {args.seed}; "
        f"{args.bootstrap} bootstrap resamples of items (95% percentile CIs).",
        f"Metrics: {', '.join(scorer.metrics)}; BLEU {scorer.bleu_signature if 'bleu4' in scorer.metrics else ''}; "
        f"lower-cased: {not args.no_lowercase}; BERTScore encoder: {args.bertscore_model} "
        f"(layer {args.bertscore_layers or 'last'}); METEOR WordNet: "
        f"{scorer.wordnet_source if scorer.wordnet is not None else 'absent'}.",
        *(f"Skipped: {m}: {why}" for m, why in scorer.skipped.items()),
        f"Machine: {platform.machine()} CPU, Python {platform.python_version()}; took {time.time() - started:.0f} s.",
    ]
    md = [markdown_table(rows, "## Instance-level correlation with human ratings"), *meta]
    if sys_rows:
        md.append("\n" + markdown_table(sys_rows, f"## System level ({sys_rows[0]['n']} systems, no CI)"))
    if cross:
        md += [
            "",
            "## Our scores against the authors' columns (item by item)",
            "",
            "| metric | Pearson | Spearman | mean ours | mean theirs | n |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {c['metric']} | {_fmt(c['pearson'])} | {_fmt(c['spearman'])} | {_fmt(c['mean_ours'])} | "
            f"{_fmt(c['mean_theirs'])} | {c['n']} |"
            for c in cross
        ]
    (out / "correlations.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return {"rows": rows, "system_rows": sys_rows, "crosscheck": cross, "skipped": scorer.skipped}


if __name__ == "__main__":
    main()
