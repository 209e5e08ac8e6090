"""Leave-one-domain-out runner: fit + test once per target domain and seed, then write a DomainBed-style table.

    python scripts/run_lodo.py -c configs/swad/rotated_digits.yaml --seeds 0 1 2 --out docs/results/rotated_digits
    python scripts/run_lodo.py -c configs/swad/pacs.yaml --seeds 0 1 2 -- --data.root /data/domainbed

Each run is `cli.py fit -c CONFIG --data.init_args.test_envs [e] --seed_everything s --data.init_args.trial_seed s
--test_after_fit true` (in this process), so its weight variants are tested right after fit. Rows of the table:
ERM last iterate, ERM selected by training-domain validation ("iid"), and the averaged weights (SWAD or SWA)
when the config has that callback; columns: each target domain, then the average over domains. Cells are mean and
standard deviation over seeds (the average column averages domains within a seed first). Written as Markdown and
CSV, with the per-run numbers in JSON. `--resume` keeps the runs already in OUT/runs.json (same config and
overrides assumed) and runs the rest.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import LitCLI  # noqa: E402

ROW_NAMES = {
    "last": "ERM (last iterate)",
    "iid": "ERM (training-domain validation)",
    "swad": "SWAD",
    "swa": "SWA",
}


def run_one(config: list[str], env: int, seed: int, extra: list[str], out: Path) -> tuple[dict, str]:
    """Fit and test with target domain `env` and seed `seed`; return ({variant: test/acc}, domain name)."""
    args = ["fit"]
    for c in config:
        args += ["-c", c]
    args += [
        f"--data.init_args.test_envs=[{env}]",
        f"--seed_everything={seed}",
        f"--data.init_args.trial_seed={seed}",
        "--test_after_fit=true",
        f"--trainer.default_root_dir={out / 'runs'}",
        *extra,
    ]
    cli = LitCLI(args=args)
    domain = cli.datamodule.domain_names[env]
    return {variant: metrics[f"test/acc/{domain}"] for variant, metrics in cli.test_results.items()}, domain


def mean_std(values: list[float]) -> str:
    m = 100 * statistics.fmean(values)
    s = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def summarize(runs: list[dict], seeds: list[int]) -> tuple[list[str], list[list[str]]]:
    """Build the table: header and rows (variant, per-domain cells, average cell)."""
    domains = list(dict.fromkeys(r["domain"] for r in runs))
    variants = [v for v in ("last", "iid", "swad", "swa") if all(v in r["acc"] for r in runs)]
    header = ["weights", *domains, "Avg"]
    rows = []
    for v in variants:
        cells = [ROW_NAMES[v]]
        for d in domains:
            cells.append(mean_std([r["acc"][v] for r in runs if r["domain"] == d]))
        per_seed_avg = [statistics.fmean(r["acc"][v] for r in runs if r["seed"] == s) for s in seeds]
        cells.append(mean_std(per_seed_avg))
        rows.append(cells)
    return header, rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-c", "--config", action="append", required=True, help="config file(s), as for cli.py"
    )
    parser.add_argument("--envs", type=int, nargs="*", help="target domains (default: every domain)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("outputs/lodo"))
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs already in OUT/runs.json, run the rest"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    probe = LitCLI(args=[*sum((["-c", c] for c in args.config), []), *extra], run=False)
    n_domains = len(probe.datamodule.domain_names)
    envs = args.envs if args.envs else list(range(n_domains))
    done_file = args.out / "runs.json"
    runs = json.loads(done_file.read_text()) if args.resume and done_file.is_file() else []
    done = {(r["env"], r["seed"]) for r in runs}
    for seed in args.seeds:
        for env in envs:
            if (env, seed) in done:
                continue
            acc, domain = run_one(args.config, env, seed, extra, args.out)
            runs.append({"env": env, "domain": domain, "seed": seed, "acc": acc})
            done_file.write_text(json.dumps(runs, indent=2))
    runs = [r for r in runs if r["seed"] in args.seeds and r["env"] in envs]
    header, rows = summarize(runs, args.seeds)
    md = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]
    table = "\n".join(md)
    (args.out / "table.md").write_text(
        f"Target-domain test accuracy (%), mean ± std over seeds {args.seeds}; config {' '.join(args.config)}\n\n"
        + table
        + "\n"
    )
    with open(args.out / "table.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    print(table)
    print(f"Saved {args.out / 'table.md'}, table.csv and runs.json")


if __name__ == "__main__":
    main()
