"""Multi-task weighting and gradient surgery over k tasks (here: timestep clusters).

- `UncertaintyWeighting` (Kendall et al., 2018), in ANT's form: ``sum_i 1/2 (exp(-s_i) L_i + s_i)``.
- `pcgrad` (Yu et al., 2020): project each task gradient off the others it conflicts with, then sum.
- `nash_weights` (Navon et al., 2022): the Nash bargaining solution ``G G^T a = 1 / a``, ``a > 0``.
- `per_task_grads`: the k task gradients, flattened, from one batched backward (or a loop).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class UncertaintyWeighting(nn.Module):
    """Learned per-task log-variances ``s`` (init 0): ``loss = sum_i 1/2 (exp(-s_i) L_i + s_i)``.

    ``divide_by_k`` also divides each ``L_i`` by k, as the official code does (it only shifts ``s`` by log k).
    """

    def __init__(self, k: int, divide_by_k: bool = False) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(k))
        self.divide_by_k = divide_by_k

    def forward(self, task_losses: torch.Tensor) -> torch.Tensor:
        if self.divide_by_k:
            task_losses = task_losses / task_losses.numel()
        return 0.5 * (torch.exp(-self.log_vars) * task_losses + self.log_vars).sum()


def pcgrad(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad on ``grads`` of shape ``(k, P)``: returns the summed projected gradient ``(P,)``.

    For each task i, over the other tasks j in random order: if ``g~_i . g_j < 0`` then
    ``g~_i -= (g~_i . g_j / |g_j|^2) g_j`` (projection on the *original* g_j).
    """
    k = grads.shape[0]
    out = grads.clone()
    sq_norms = (grads * grads).sum(dim=1)
    for i in range(k):
        order = torch.randperm(k, generator=generator).tolist()
        for j in order:
            if j == i or sq_norms[j] == 0:
                continue
            dot = torch.dot(out[i], grads[j])
            if dot < 0:
                out[i] -= (dot / sq_norms[j]) * grads[j]
    return out.sum(dim=0)


def nash_weights(gram: torch.Tensor, init: np.ndarray | None = None, max_weight: float = 1e4) -> np.ndarray:
    """Nash bargaining weights for the task Gram matrix ``G G^T`` (k x k): ``a > 0`` with ``G G^T a = 1 / a``.

    The Gram matrix is scaled by its Frobenius norm (official code). The solution is the minimiser of the strictly
    convex ``1/2 a^T M a - sum_i log a_i`` (its gradient vanishes exactly at ``M a = 1 / a``), found with SciPy's
    L-BFGS-B under ``1e-8 <= a_i <= max_weight`` (the bound only matters when M is singular). SciPy is installed
    with scikit-learn, so no extra solver is needed; the official code uses cvxpy with a sequence of convex
    approximations, which has the same fixed point.
    """
    from scipy.optimize import minimize

    m = gram.detach().double().cpu().numpy()
    norm = np.linalg.norm(m)
    if not np.isfinite(norm) or norm == 0:
        return np.ones(m.shape[0])
    m = m / norm
    k = m.shape[0]
    x0 = np.ones(k) if init is None else np.clip(np.asarray(init, dtype=np.float64), 1e-6, max_weight)

    def fun(a: np.ndarray) -> tuple[float, np.ndarray]:
        ma = m @ a
        return 0.5 * a @ ma - np.log(a).sum(), ma - 1.0 / a

    res = minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(1e-8, max_weight)] * k,
        options={"maxiter": 500, "ftol": 1e-15, "gtol": 1e-10},
    )
    return res.x


def per_task_grads(
    task_losses: torch.Tensor, params: list[torch.Tensor], batched: bool = True
) -> torch.Tensor:
    """Gradients of each of the k ``task_losses`` w.r.t. ``params``, flattened: shape ``(k, P)``.

    ``batched`` uses one vectorized backward (``is_grads_batched`` with ``grad_outputs = I_k``); otherwise k
    backward passes with ``retain_graph``. Parameters a task does not reach get zero gradient.
    """
    k = task_losses.shape[0]
    if batched:
        eye = torch.eye(k, dtype=task_losses.dtype, device=task_losses.device)
        grads = torch.autograd.grad(
            task_losses, params, grad_outputs=eye, is_grads_batched=True, allow_unused=True
        )
        flat = [
            (g if g is not None else torch.zeros(k, *p.shape, dtype=p.dtype, device=p.device)).reshape(k, -1)
            for g, p in zip(grads, params, strict=True)
        ]
        return torch.cat(flat, dim=1)
    rows = []
    for i in range(k):
        grads = torch.autograd.grad(task_losses[i], params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1)
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def assign_flat_grad(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Write the flat gradient ``flat`` (P,) into ``p.grad`` of each parameter, in order."""
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat gradient has {flat.numel()} entries, parameters have {offset}")
