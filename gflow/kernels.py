"""The empirical neural tangent kernel, in blocks of bounded memory.

    Theta(w; x, x') = grad_w f(w, x) . grad_w f(w, x')        (Jacot et al.; seed 001)

computed as J(x1) J(x2)^T, the Jacobian rows being per-sample gradients vectorised with
``torch.func.vmap(grad(...))``: one batched backward per block of inputs, O(n) work
(``jacrev`` of the batched model would cost O(n^2): every row backpropagates the whole
batch). Rows of Jacobian are produced a block at a
time so that at most ``max_memory`` bytes of Jacobian exist at once.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import grad, vmap

from .errors import GflowError

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_MAX_MEMORY = 2 * 1024**3


def jacobian(model: Model, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """J[i, p] = d f(params, x_i) / d params_p for a model with scalar outputs."""

    def f(w: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return model(w, xi[None])[0]

    return vmap(grad(f), in_dims=(None, 0))(params.detach(), x)


def _block_rows(n_params: int, itemsize: int, max_memory: int, parts: int) -> int:
    rows = max_memory // (parts * n_params * itemsize)
    if rows < 1:
        raise GflowError(
            f"one Jacobian row of {n_params} parameters needs {n_params * itemsize * parts / 2**20:.0f} MiB, "
            f"over the kernel memory budget of {max_memory / 2**20:.0f} MiB: raise --kernel-memory"
        )
    return int(rows)


def ntk(
    model: Model, params: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY,
) -> torch.Tensor:
    """Theta(params; x1, x2) as an (n1, n2) matrix; x2 = None means x1 (symmetric).

    Memory: at most ``max_memory`` bytes of Jacobian at once. When all of J(x2) fits in
    half the budget it is computed once; otherwise both sides go in blocks and J(x2)
    blocks are recomputed for each block of x1 (more time, same memory).
    """
    try:
        return _ntk_blocked(model, params, x1, x2, max_memory)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and "allocate" not in str(e):
            raise
        raise GflowError(
            f"out of memory computing the NTK on {len(x1)} points ({params.numel()} parameters, Jacobian budget "
            f"{max_memory / 2**20:.0f} MiB): lower --kernel-memory (smaller blocks) or --kernel-n (fewer points)"
        ) from None


def _ntk_blocked(
    model: Model, params: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None, max_memory: int
) -> torch.Tensor:
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    n_params, itemsize = params.numel(), params.element_size()
    out = params.new_empty(len(x1), len(x2))
    if len(x2) * n_params * itemsize <= max_memory // 2:
        j2 = jacobian(model, params, x2)
        rows = _block_rows(n_params, itemsize, max_memory // 2, 1)
        for i in range(0, len(x1), rows):
            j1 = j2[i : i + rows] if symmetric else jacobian(model, params, x1[i : i + rows])
            out[i : i + rows] = j1 @ j2.T
        return out
    rows = _block_rows(n_params, itemsize, max_memory, 2)
    for i in range(0, len(x1), rows):
        j1 = jacobian(model, params, x1[i : i + rows])
        for j in range(0, len(x2), rows):
            if symmetric and j < i:
                out[i : i + rows, j : j + rows] = out[j : j + rows, i : i + rows].T
                continue
            j2 = j1 if (symmetric and i == j) else jacobian(model, params, x2[j : j + rows])
            out[i : i + rows, j : j + rows] = j1 @ j2.T
    return out


def ntk_loop(model: Model, params: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None = None) -> torch.Tensor:
    """The same kernel from one autograd backward per sample: the slow, obvious reference."""
    x2 = x1 if x2 is None else x2

    def grads(x: torch.Tensor) -> torch.Tensor:
        rows = []
        for xi in x:
            w = params.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(model(w, xi[None]).sum(), w)
            rows.append(g)
        return torch.stack(rows)

    g1 = grads(x1)
    g2 = g1 if x2 is x1 else grads(x2)
    return g1 @ g2.T


def relative_change(theta: torch.Tensor, theta0: torch.Tensor) -> float:
    """||Theta - Theta0||_F / ||Theta0||_F (seed 001: the kernel evolution of feature training)."""
    return float((theta - theta0).norm() / theta0.norm())
