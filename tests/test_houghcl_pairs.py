"""HoughCL pair rules and the geometric pair-correctness metric."""

import torch
import torch.nn.functional as F

from lightning_modules.houghcl.geometry import pair_correctness, true_key_cells
from lightning_modules.houghcl.pairs import argmax_pairs, build_pair_rule, hough_pairs, threshold_pairs

S = 8


def shifted_maps(dy: int, dx: int, outlier_frac: float = 0.3, seed: int = 0, batch: int = 2):
    """Key map = random unit vectors; query cell (r, c) = noisy copy of key cell (r + dy, c + dx) where that
    exists (cosine ~0.89). For a fraction of the query cells a distractor key cell elsewhere is made MORE similar
    (cosine ~0.93), so arg-max picks the outlier. Returns (sim (B, N, N), true index, has_true, is_outlier)."""
    g = torch.Generator().manual_seed(seed)
    n, c = S * S, 64
    key = F.normalize(torch.randn(batch, n, c, generator=g), dim=2)
    rows, cols = torch.arange(S).repeat_interleave(S), torch.arange(S).repeat(S)
    tr, tc = rows + dy, cols + dx
    has_true = (tr >= 0) & (tr < S) & (tc >= 0) & (tc < S)
    true_idx = (tr.clamp(0, S - 1) * S + tc.clamp(0, S - 1)).expand(batch, n).clone()
    noise = F.normalize(torch.randn(batch, n, c, generator=g), dim=2)
    copy = F.normalize(key.gather(1, true_idx[..., None].expand(-1, -1, c)) + 0.5 * noise, dim=2)
    query = torch.where(has_true[None, :, None], copy, noise)
    outlier = torch.zeros(batch, n, dtype=torch.bool)
    for b in range(batch):  # test construction only: distinct distractor cells, never a true match
        cand = has_true.nonzero().flatten()
        cells = cand[torch.randperm(len(cand), generator=g)[: int(outlier_frac * len(cand))]]
        used = set(true_idx[b, has_true].tolist())
        free = [j for j in torch.randperm(n, generator=g).tolist() if j not in used]
        for i, j in zip(cells.tolist(), free, strict=False):
            extra = F.normalize(torch.randn(c, generator=g), dim=0)
            key[b, j] = F.normalize(query[b, i] + 0.4 * extra, dim=0)
            outlier[b, i] = True
    sim = query @ key.transpose(1, 2)
    return sim, true_idx, has_true.expand(batch, n), outlier


def accuracy(index, true_idx, mask):
    return (index == true_idx)[mask].float().mean().item()


def test_hough_recovers_translation_where_argmax_fails():
    for dy, dx in [(2, 1), (-1, 3)]:
        sim, true_idx, has_true, outlier = shifted_maps(dy, dx)
        assert outlier.sum() >= 6
        am, _ = argmax_pairs(sim, (S, S))
        hg, valid = hough_pairs(sim, (S, S))
        assert valid.all()
        # arg-max follows the distractors; Hough's offset support overrules them
        assert accuracy(am, true_idx, outlier) < 0.1
        assert accuracy(hg, true_idx, outlier) > 0.8
        assert accuracy(hg, true_idx, has_true) > 0.9
        assert accuracy(hg, true_idx, has_true) > accuracy(am, true_idx, has_true) + 0.2


def test_hough_vote_options_and_flip():
    sim, true_idx, has_true, outlier = shifted_maps(1, -2, seed=1)
    for opts in [{"vote": "centered"}, {"vote": "softmax"}, {"smooth_sigma": 0.0}, {"vote_border": False}]:
        idx, _ = build_pair_rule("hough", opts)(sim, (S, S))
        assert accuracy(idx, true_idx, outlier) > 0.75, opts
    # mirror the key map horizontally: plain translation voting breaks, the mirrored hypothesis recovers it
    mirror = torch.arange(S * S).view(S, S).flip(1).flatten()
    sim_m = sim[:, :, mirror]
    true_m = torch.argsort(mirror)[true_idx]
    plain, _ = hough_pairs(sim_m, (S, S))
    both, _ = hough_pairs(sim_m, (S, S), flip="vote_both")
    unflip, _ = hough_pairs(sim_m, (S, S), torch.tensor([True, True]), flip="unflip")
    assert accuracy(both, true_m, outlier) > 0.8
    assert accuracy(unflip, true_m, outlier) > 0.8
    assert accuracy(plain, true_m, outlier) < accuracy(both, true_m, outlier) - 0.3
    idx, valid = hough_pairs(sim, (S, S), min_conf_quantile=0.5)
    assert 0.4 < valid.float().mean() < 0.7


def test_threshold_baseline_masks_low_similarity():
    sim = torch.tensor([[[0.9, 0.1, 0.0, 0.0], [0.2, 0.3, 0.1, 0.0], [0.0, 0.0, 0.6, 0.7], [0, 0, 0, 0.4]]])
    idx, valid = threshold_pairs(sim, (2, 2), threshold=0.5)
    assert idx.tolist() == [[0, 1, 3, 3]]
    assert valid.tolist() == [[True, False, True, False]]


def test_pair_correctness_identity_and_shift():
    b = 3
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(b, 4)
    noflip = torch.zeros(b, dtype=torch.bool)
    diag = torch.arange(S * S).expand(b, -1)
    correct, total = pair_correctness(diag, full, noflip, full, noflip, (S, S))
    assert total == b * S * S and correct == total  # identity crops: 100 %
    # key view = right half of the image: query column c maps to key column 2c - 7 (inside for c >= 4)
    right = torch.tensor([[0.5, 0.0, 1.0, 1.0]]).expand(b, 4)
    rows, cols, inside = true_key_cells(full, noflip, right, noflip, (S, S))
    assert inside.sum() == b * S * S // 2
    assert cols[0, 5] == 3 and rows[0, 5 + S] == 1
    correct, total = pair_correctness(diag, full, noflip, right, noflip, (S, S))
    assert total == b * S * S // 2 and 0 < correct < total  # identity pairing is now mostly wrong
    true_idx = rows * S + cols
    correct, _ = pair_correctness(true_idx, full, noflip, right, noflip, (S, S), tolerance=0)
    assert correct == total
    # a flipped key view of the same crop: the true cell is the mirrored one
    flip = torch.ones(b, dtype=torch.bool)
    rows, cols, inside = true_key_cells(full, noflip, full, flip, (S, S))
    assert inside.all() and cols[0, 0] == S - 1 and cols[0, S - 1] == 0
