"""The empirical neural tangent kernel, in blocks of bounded memory.

    Theta(w; x, x') = grad_w f(w, x) . grad_w f(w, x')        (Jacot et al.; seed 001)

Two ways, the first used whenever the model offers it (``method="auto"``):

* structured (dense layers): layer l computes u_l = a_l W_l^T, so the per-sample gradient
  of f with respect to W_l is the outer product delta_l a_l^T with delta_l = df/du_l, and

      Theta(x, x') = sum_l (delta_l(x) . delta_l(x')) (a_l(x) . a_l(x')),

  two Gram matrices per layer from one batched forward+backward; the Jacobian (n x P) is
  never formed, O(n^2 sum_l (d_l + h_l)) work instead of O(n^2 P).
* jacobian (any model): J(x1) J(x2)^T, the Jacobian rows being per-sample gradients
  vectorised with ``torch.func.vmap(grad(...))``: one batched backward per block of
  inputs, O(n) work (``jacrev`` of the batched model would cost O(n^2): every row
  backpropagates the whole batch). Rows are produced a block at a time so that at most
  ``max_memory`` bytes of Jacobian exist at once.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _block_rows(row_size: int, itemsize: int, max_memory: int, parts: int) -> int:
    """How many rows of ``row_size`` numbers fit ``parts`` times in ``max_memory`` bytes."""
    rows = max_memory // (parts * row_size * itemsize)
    if rows < 1:
        raise GflowError(
            f"one kernel block row of {row_size} numbers needs {row_size * itemsize * parts / 2**20:.0f} MiB, "
            f"over the kernel memory budget of {max_memory / 2**20:.0f} MiB: raise --kernel-memory"
        )
    return int(rows)


METHODS = ("auto", "structured", "jacobian")


def ntk(
    model: Model, params: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY, method: str = "auto",
) -> torch.Tensor:
    """Theta(params; x1, x2) as an (n1, n2) matrix; x2 = None means x1 (symmetric).

    ``method``: "structured" (models with ``tangent_factors``: dense networks), "jacobian"
    (any model), or "auto" (structured where available). Memory: at most ``max_memory``
    bytes of Jacobian (jacobian) or of per-block Gram temporaries (structured) at once.
    When all of J(x2) fits in half the budget it is computed once; otherwise both sides go
    in blocks and J(x2) blocks are recomputed for each block of x1 (more time, same memory).
    """
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: must be one of {', '.join(METHODS)}")
    structured = getattr(model, "has_tangent_factors", False)
    if method == "structured" and not structured:
        raise GflowError(f"the structured NTK needs dense layers; {type(getattr(model, 'module', model)).__name__} "
                         "has no tangent_factors: use method='jacobian'")
    try:
        if method != "jacobian" and structured:
            return _ntk_structured(model, params, x1, x2, max_memory)
        return _ntk_blocked(model, params, x1, x2, max_memory)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and "allocate" not in str(e):
            raise
        raise GflowError(
            f"out of memory computing the NTK on {len(x1)} points ({params.numel()} parameters, memory budget "
            f"{max_memory / 2**20:.0f} MiB): lower --kernel-memory (smaller blocks) or --kernel-n (fewer points)"
        ) from None


def _ntk_structured(
    model: Model, params: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None, max_memory: int
) -> torch.Tensor:
    w = params.detach()
    factors1 = model.tangent_factors(w, x1)
    factors2 = factors1 if x2 is None else model.tangent_factors(w, x2)
    n2 = len(x1) if x2 is None else len(x2)
    out = params.new_zeros(len(x1), n2)
    # two (rows x n2) Gram temporaries per layer are live at once
    rows = _block_rows(n2, params.element_size(), max_memory, 2)
    for i in range(0, len(x1), rows):
        block = out[i : i + rows]
        for (a1, d1), (a2, d2) in zip(factors1, factors2):
            block.addcmul_(a1[i : i + rows] @ a2.T, d1[i : i + rows] @ d2.T)
    return out


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
