"""Dense positive-pair rules with one signature, all vectorised (no Python loops over positions).

Every rule maps a batch of similarity matrices between the cells of a query feature map and a key feature map to,
for each query cell, the index of its positive key cell and whether that query cell takes part in the dense loss:

    rule(sim: (B, N, M), grid: (H, W), flip_mismatch: (B,) bool | None) -> (index (B, N) long, valid (B, N) bool)

with N = M = H * W cells in row-major order. `flip_mismatch` (True where exactly one view is mirrored) is used only
by Hough voting with `flip="unflip"`; the other rules ignore it.

- `argmax_pairs`: DenseCL's rule, the most similar key cell.
- `threshold_pairs`: the arg-max kept only where its similarity reaches `threshold` (a similarity-threshold
  baseline; cells below it leave the dense loss).
- `hough_pairs`: HoughCL as reconstructed in our spec (shared/design/methods/houghcl.md, section 2): every candidate
  pair (i, j) votes for the grid offset g(j) - g(i); each candidate is scored by its similarity weight times the
  (smoothed) vote count of its offset; the positive is the best-scored key.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

PairRule = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _check(sim: torch.Tensor, grid: tuple[int, int]) -> None:
    h, w = grid
    if sim.ndim != 3 or sim.shape[1] != h * w or sim.shape[2] != h * w:
        raise ValueError(f"sim must be (B, {h * w}, {h * w}) for a {h}x{w} grid, got {tuple(sim.shape)}")


def argmax_pairs(
    sim: torch.Tensor, grid: tuple[int, int], flip_mismatch: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DenseCL: each query cell's positive is its most similar key cell; every cell is used."""
    _check(sim, grid)
    index = sim.argmax(dim=2)
    return index, torch.ones_like(index, dtype=torch.bool)


def threshold_pairs(
    sim: torch.Tensor,
    grid: tuple[int, int],
    flip_mismatch: torch.Tensor | None = None,
    threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The arg-max pair, kept only where its cosine similarity is at least `threshold`."""
    _check(sim, grid)
    best, index = sim.max(dim=2)
    return index, best >= threshold


@functools.lru_cache(maxsize=32)
def offset_bins(h: int, w: int, mirror: bool = False, device: str = "cpu") -> torch.Tensor:
    """(N, N) long: the Hough bin of the offset g(j) - g(i) between query cell i and key cell j.

    Bins index the (2H - 1) x (2W - 1) offsets in row-major order. With `mirror`, key columns are read as
    W - 1 - c (the key map mirrored horizontally).
    """
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    key_cols = (w - 1 - cols) if mirror else cols
    dy = rows[None, :] - rows[:, None] + (h - 1)
    dx = key_cols[None, :] - cols[:, None] + (w - 1)
    return (dy * (2 * w - 1) + dx).to(device)


def border_mask(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(N,) bool: True for interior cells (not on the first/last row or column)."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return (rows > 0) & (rows < h - 1) & (cols > 0) & (cols < w - 1)


@functools.lru_cache(maxsize=32)
def smoothing_matrix(h: int, w: int, sigma: float, device: str = "cpu") -> torch.Tensor:
    """(nbins, nbins): Gaussian smoothing (truncated at 2 sigma, zero padding) of a (2H-1) x (2W-1) Hough space as
    one matrix, so smoothing a batch is a single small matmul (cheaper than conv2d on CPU)."""
    radius = max(1, math.ceil(2 * sigma))

    def axis(n: int) -> torch.Tensor:
        t = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        pos = torch.arange(n)
        diff = pos[:, None] - pos[None, :]
        return torch.where(diff.abs() <= radius, kernel[(diff + radius).clamp(0, 2 * radius)], 0.0)

    return torch.kron(axis(2 * h - 1), axis(2 * w - 1)).to(device)


def _gaussian_smooth(hough: torch.Tensor, h: int, w: int, sigma: float) -> torch.Tensor:
    """Smooth (B, nbins) Hough spaces laid out as (2H-1) x (2W-1) with a separable Gaussian."""
    return hough @ smoothing_matrix(h, w, float(sigma), str(hough.device)).to(hough.dtype)


def _votes(sim: torch.Tensor, bins: torch.Tensor, vote: str, topk: int, tau: float) -> torch.Tensor:
    """(B, N, M) vote weights v_ij (spec step 2; raw ReLU(c) votes are deliberately not offered)."""
    if vote == "topk":
        k = min(topk, sim.shape[2])
        top = sim.topk(k, dim=2).indices
        return torch.zeros_like(sim).scatter_(2, top, 1.0)
    if vote == "centered":
        return F.relu(sim - sim.mean(dim=2, keepdim=True))
    if vote == "softmax":
        counts = torch.bincount(bins.flatten(), minlength=int(bins.max()) + 1).to(sim.dtype)
        return torch.softmax(sim / tau, dim=2) / counts[bins]
    raise ValueError(f"unknown vote {vote!r}; choose topk, centered or softmax")


def _hough_space(votes: torch.Tensor, bins: torch.Tensor, nbins: int) -> torch.Tensor:
    """(B, nbins): H(b) = sum of the votes of every pair whose offset falls in bin b."""
    flat = bins.flatten().expand(votes.shape[0], -1)
    return votes.new_zeros(votes.shape[0], nbins).scatter_add_(1, flat, votes.flatten(1))


@torch.no_grad()
def hough_pairs(
    sim: torch.Tensor,
    grid: tuple[int, int],
    flip_mismatch: torch.Tensor | None = None,
    vote: str = "topk",
    topk: int = 5,
    vote_tau: float = 0.05,
    smooth_sigma: float = 1.0,
    confidence: str = "softmax",
    tau: float = 0.05,
    vote_border: bool = True,
    flip: str = "none",
    min_conf_quantile: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hough voting over grid offsets (reconstruction; every choice is an option, defaults from our spec).

    Args:
        vote: `topk` (1 for each of the `topk` most similar keys), `centered` (ReLU(c - mean_j c)) or `softmax`
            (softmax(c / vote_tau) divided by the number of pairs in the bin).
        smooth_sigma: Gaussian smoothing of the Hough space in bins (0 = off).
        confidence: a_ij = `softmax` (softmax_j(c / tau)) or `relu` (ReLU(c)); score m_ij = a_ij * H(b_ij).
        vote_border: False drops votes from pairs with a query or key cell on the map border (padding leaks
            absolute position there).
        flip: `none` (pure translation); `vote_both` (also vote with the key map mirrored and keep, per sample,
            the hypothesis with the higher peak); `unflip` (use the mirrored hypothesis where `flip_mismatch`).
        min_conf_quantile: drop the query cells whose best score is below this per-sample quantile (0 = off).
    """
    _check(sim, grid)
    h, w = grid
    nbins = (2 * h - 1) * (2 * w - 1)
    dev = str(sim.device)
    sim = sim.float()
    hypotheses = [offset_bins(h, w, False, dev)]
    if flip in ("vote_both", "unflip"):
        hypotheses.append(offset_bins(h, w, True, dev))
    elif flip != "none":
        raise ValueError(f"unknown flip handling {flip!r}; choose none, vote_both or unflip")
    if confidence == "softmax":
        affinity = torch.softmax(sim / tau, dim=2)
    elif confidence == "relu":
        affinity = F.relu(sim)
    else:
        raise ValueError(f"unknown confidence {confidence!r}; choose softmax or relu")
    scores, peaks = [], []
    for bins in hypotheses:  # at most two hypotheses (translation, mirrored translation)
        votes = _votes(sim, bins, vote, topk, vote_tau)
        if not vote_border:
            inner = border_mask(h, w, sim.device)
            votes = votes * (inner[:, None] & inner[None, :]).to(votes.dtype)
        hough = _hough_space(votes, bins, nbins)
        if smooth_sigma > 0:
            hough = _gaussian_smooth(hough, h, w, smooth_sigma)
        peaks.append(hough.max(dim=1).values)
        scores.append(affinity * hough.gather(1, bins.flatten().expand(sim.shape[0], -1)).view_as(sim))
    score = scores[0]
    if flip == "vote_both":
        score = torch.where((peaks[1] > peaks[0])[:, None, None], scores[1], scores[0])
    elif flip == "unflip":
        if flip_mismatch is None:
            raise ValueError("flip='unflip' needs the per-view flip flags (flip_mismatch)")
        score = torch.where(flip_mismatch.to(sim.device)[:, None, None], scores[1], scores[0])
    best, index = score.max(dim=2)
    valid = torch.ones_like(index, dtype=torch.bool)
    if min_conf_quantile > 0:
        cut = torch.quantile(best, min_conf_quantile, dim=1, keepdim=True)
        valid = best >= cut
    return index, valid


RULES: dict[str, PairRule] = {"argmax": argmax_pairs, "threshold": threshold_pairs, "hough": hough_pairs}


def build_pair_rule(name: str, options: dict | None = None) -> PairRule:
    """The rule `name` (argmax | threshold | hough) with its options bound."""
    if name not in RULES:
        raise ValueError(f"unknown pairing rule {name!r}; choose one of {sorted(RULES)}")
    return functools.partial(RULES[name], **(options or {}))
