"""ScoreCL's premise on digits: does the score value of a view track how strongly it was augmented?

    python scripts/scorecl_diagnostics.py --seeds 0 1 2 --out docs/results/ssl_digits/diagnostics.json

For each seed, the digits score network of `configs/scorecl/simclr_digits_scorecl.yaml` (4-layer CNN, width 64,
DSM over 10 sigma from 1 to 0.02, `--pretrain_steps` steps on the un-augmented training images) is trained, then
`--pairs` training images each get two views from `DigitsStrengthAugment`, whose strengths m1, m2 are recorded.
Reported (our spec, section 8, step A):
- Spearman rho(m, S(v)) over all views (the paper's observation: more augmentation, larger score value);
- Spearman rho(|m1 - m2|, |S(v1) - S(v2)|) over pairs (what ScoreCL's pair weight d relies on);
- the distribution of the weights w = d / mean(d) over batches of 256 pairs (quantiles, coefficient of variation).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from callbacks.scorecl import ScoreWeighting  # noqa: E402
from datamodules.ssl.augment import DigitsStrengthAugment  # noqa: E402
from datamodules.ssl.datasets import digits_split  # noqa: E402


def diagnose(
    seed: int, pretrain_steps: int = 1500, pairs: int = 2000, width: int = 64, batch: int = 256
) -> dict:
    """Train the digits score network with `seed` and measure the rank correlations of step A."""
    images = digits_split(1200, 0)["train"][0]
    weighting = ScoreWeighting(
        pretrain_steps=pretrain_steps,
        net_kwargs={"width": width, "layers": 4},
        sigma_min=0.02,
        seed=seed,
    )
    weighting.build(1, 8, "cpu")
    loader = DataLoader(
        TensorDataset(images),
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        drop_last=True,
    )
    dsm = weighting.pretrain(loader, pretrain_steps, "cpu")
    torch.manual_seed(seed)
    augment = DigitsStrengthAugment()
    index = torch.randint(0, len(images), (pairs,))
    views, strengths = [], []
    for i in index.tolist():
        for _ in range(2):
            views.append(augment(images[i]))
            strengths.append(augment.last_strength)
    v = torch.stack(views)
    m = np.asarray(strengths)
    s = torch.cat([weighting.score_values(chunk) for chunk in v.split(512)]).numpy()
    m1, m2, s1, s2 = m[0::2], m[1::2], s[0::2], s[1::2]
    d = np.abs(s1 - s2)
    w = np.concatenate([c / c.mean() for c in np.array_split(d, max(1, pairs // batch))])
    return {
        "seed": seed,
        "dsm_loss_first_last": [dsm[0], float(np.mean(dsm[-50:]))],
        "rho_strength_score": float(spearmanr(m, s).statistic),
        "rho_gap_strength_gap_score": float(spearmanr(np.abs(m1 - m2), d).statistic),
        "weight_quantiles_0_10_50_90_100": np.quantile(w, [0, 0.1, 0.5, 0.9, 1.0]).round(3).tolist(),
        "weight_cv": float(w.std() / w.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--pretrain_steps", type=int, default=1500)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for seed in args.seeds:
        r = diagnose(seed, args.pretrain_steps, args.pairs, args.width)
        results.append(r)
        print(
            f"seed {seed}: rho(m, S) {r['rho_strength_score']:+.3f}  "
            f"rho(|dm|, |dS|) {r['rho_gap_strength_gap_score']:+.3f}  "
            f"weights q0/10/50/90/100 {r['weight_quantiles_0_10_50_90_100']}  cv {r['weight_cv']:.2f}",
            flush=True,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))


if __name__ == "__main__":
    main()
