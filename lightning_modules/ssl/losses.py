"""SSL losses, each returning the per-pair terms (reduction none) that ScoreCL weights.

Every function returns a tensor of shape (N,) with one loss per positive pair (local to this process); the batch
loss of the method is its mean (plus, for VICReg, the batch-level variance and covariance terms). The formulas
follow solo-learn's loss functions (written from the papers and that code's behaviour, not copied).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_per_pair(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.2,
    all_z1: torch.Tensor | None = None,
    all_z2: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """SimCLR's NT-Xent per positive pair: the mean of the two anchors' cross-entropies.

    Anchor i (a view z1_i or z2_i) scores every other view of the *global* batch (`all_z1`, `all_z2`, gathered
    over processes; this process's pairs sit at rows `offset .. offset+N`). Without gathered tensors the local
    batch is the global one. Returns shape (N,).
    """
    if all_z1 is None or all_z2 is None:
        all_z1, all_z2, offset = z1, z2, 0
    n, m = z1.shape[0], all_z1.shape[0]
    q = F.normalize(torch.cat([z1, z2]), dim=1)
    k = F.normalize(torch.cat([all_z1, all_z2]), dim=1)
    logits = q @ k.T / temperature
    local = torch.arange(n, device=z1.device) + offset
    self_idx = torch.cat([local, local + m])
    pos_idx = torch.cat([local + m, local])
    rows = torch.arange(2 * n, device=z1.device)
    logits = logits.index_put(
        (rows, self_idx), torch.tensor(float("-inf"), device=z1.device, dtype=logits.dtype)
    )
    per_anchor = torch.logsumexp(logits, dim=1) - logits[rows, pos_idx]
    return 0.5 * (per_anchor[:n] + per_anchor[n:])


def simsiam_per_pair(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """SimSiam: -(cos(p1, sg z2) + cos(p2, sg z1)) / 2 per pair, shape (N,)."""
    return -0.5 * (F.cosine_similarity(p1, z2.detach(), dim=1) + F.cosine_similarity(p2, z1.detach(), dim=1))


def whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """W-MSE whitening of a batch (rows = samples): centre, then multiply by the inverse Cholesky factor of the
    covariance, so the output's covariance is the identity. Needs more rows than columns."""
    if x.shape[0] <= x.shape[1]:
        raise ValueError(f"whitening needs more samples than dimensions, got {tuple(x.shape)}")
    x = x.float()
    centred = x - x.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / (x.shape[0] - 1)
    if eps:
        cov = cov + eps * torch.eye(cov.shape[0], device=x.device, dtype=cov.dtype)
    chol = torch.linalg.cholesky(cov)
    # solve L y^T = centred^T  <=>  y = centred L^{-T}
    return torch.linalg.solve_triangular(chol, centred.T, upper=False).T


def wmse_per_pair(
    z1: torch.Tensor,
    z2: torch.Tensor,
    whitening_size: int = 128,
    iterations: int = 1,
    eps: float = 0.0,
    stopgrad: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """W-MSE per pair: 2 - 2 cos(w1_i, w2_i) where each view's embeddings are whitened in random sub-batches of
    `whitening_size`, averaged over `iterations` random splits. `stopgrad` is solo-learn's simplified form (no
    gradient through the second view); `False` is the W-MSE paper's symmetric loss. Returns shape (N,)."""
    n = z1.shape[0]
    if n % whitening_size:
        raise ValueError(
            f"W-MSE needs a per-process batch divisible by whitening_size={whitening_size}, got {n}"
        )
    total = z1.new_zeros(n, dtype=torch.float32)
    for _ in range(iterations):
        perm = torch.randperm(n, generator=generator).to(z1.device)
        w1, w2 = torch.empty_like(z1, dtype=torch.float32), torch.empty_like(z2, dtype=torch.float32)
        for idx in perm.view(-1, whitening_size):
            w1[idx] = whiten(z1[idx], eps)
            w2[idx] = whiten(z2[idx], eps)
        target = w2.detach() if stopgrad else w2
        total = total + 2 - 2 * F.cosine_similarity(w1, target, dim=1)
    return total / iterations


def vicreg_invariance_per_pair(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """VICReg's invariance term per pair: ||z1_i - z2_i||^2 / D; its mean is F.mse_loss(z1, z2). Shape (N,)."""
    return (z1 - z2).pow(2).mean(dim=1)


def vicreg_variance(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """mean_d ReLU(1 - sqrt(Var_d + eps)) over the batch."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1 - std).mean()


def vicreg_covariance(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances divided by the dimension D."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d
