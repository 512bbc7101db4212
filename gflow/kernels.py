"""The empirical neural tangent kernel, in blocks of bounded memory.

    Theta(w; x, x') = grad_w f(w, x) . grad_w f(w, x')        (Jacot et al.; seed 001)

(for k outputs, summed over the outputs, or the full (n k) x (n k) kernel on request).

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
from torch.func import grad, jacrev, vmap

from .autodiff import composite_attention
from .errors import GflowError

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

DEFAULT_MAX_MEMORY = 2 * 1024**3


def jacobian(model: Model, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """J[i, c, p] = d f_c(params, x_i) / d params_p, shape (n, k, P) (k = 1 for a scalar output):
    per-sample gradients vectorised over samples (``torch.func.vmap``), or one sample at a
    time for a model that vmap cannot batch (recurrent layers write into their outputs in
    place, which vmap refuses)."""

    def f(w: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return model(w, xi[None])[0]

    w = params.detach()
    per_sample = grad(f) if model(w, x[:1]).dim() == 1 else jacrev(f)
    try:
        with composite_attention():  # fused attention has no batching rule
            rows = vmap(per_sample, in_dims=(None, 0))(w, x)
    except (RuntimeError, NotImplementedError) as e:
        if isinstance(e, torch.OutOfMemoryError) or "allocate" in str(e):
            raise
        rows = torch.stack([per_sample(w, xi) for xi in x])
    return rows[:, None] if rows.dim() == 2 else rows


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
OUTPUTS = ("trace", "full")


def ntk(
    model: Model, params: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None = None,
    max_memory: int = DEFAULT_MAX_MEMORY, method: str = "auto", outputs: str = "trace",
) -> torch.Tensor:
    """Theta(params; x1, x2); x2 = None means x1 (symmetric).

    For k outputs, ``outputs`` = "trace" gives the (n1, n2) kernel summed over outputs,
    Theta_ij = sum_c grad f_c(x_i) . grad f_c(x_j), and "full" the (n1 k, n2 k) kernel
    Theta_(i,c),(j,c') = grad f_c(x_i) . grad f_c'(x_j), rows ordered sample-major
    (row i k + c); for one output both are the (n1, n2) kernel.

    ``method``: "structured" (models with ``tangent_factors``: dense networks), "jacobian"
    (any model), or "auto" (structured where available). Memory: at most ``max_memory``
    bytes of Jacobian (jacobian) or of per-block Gram temporaries (structured) at once.
    When all of J(x2) fits in half the budget it is computed once; otherwise both sides go
    in blocks and J(x2) blocks are recomputed for each block of x1 (more time, same memory).
    """
    if method not in METHODS:
        raise ValueError(f"method = {method!r}: must be one of {', '.join(METHODS)}")
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs = {outputs!r}: must be one of {', '.join(OUTPUTS)}")
    structured = getattr(model, "has_tangent_factors", False)
    if method == "structured" and not structured:
        raise GflowError(f"the structured NTK needs dense layers; {type(getattr(model, 'module', model)).__name__} "
                         "has no tangent_factors: use method='jacobian'")
    try:
        if method != "jacobian" and structured:
            return _ntk_structured(model, params, x1, x2, max_memory, outputs == "full")
        return _ntk_blocked(model, params, x1, x2, max_memory, outputs == "full")
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not isinstance(e, (torch.OutOfMemoryError, MemoryError)) and "allocate" not in str(e):
            raise
        raise GflowError(
            f"out of memory computing the NTK on {len(x1)} points ({params.numel()} parameters, memory budget "
            f"{max_memory / 2**20:.0f} MiB): lower --kernel-memory (smaller blocks) or --kernel-n (fewer points)"
        ) from None


def _ntk_structured(
    model: Model, params: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None, max_memory: int, full: bool
) -> torch.Tensor:
    w = params.detach()
    factors1 = model.tangent_factors(w, x1)
    factors2 = factors1 if x2 is None else model.tangent_factors(w, x2)
    k = factors1[0][1].shape[0]
    n2 = len(x1) if x2 is None else len(x2)
    m = k if full else 1
    out = params.new_zeros(len(x1) * m, n2 * m)
    # two (rows x n2 m^2) Gram temporaries per layer are live at once
    rows = _block_rows(n2 * m * m, params.element_size(), max_memory, 2)
    for i in range(0, len(x1), rows):
        r = min(rows, len(x1) - i)
        block = out[i * m : (i + r) * m]
        for (a1, d1), (a2, d2) in zip(factors1, factors2):
            inputs = a1[i : i + r] @ a2.T  # (r, n2)
            if full:  # deltas (k, n, h): Gram over h for every pair of outputs
                deltas = torch.einsum("cih,ejh->icje", d1[:, i : i + r], d2)
                block.add_((inputs[:, None, :, None] * deltas).reshape(r * k, n2 * k))
            else:
                flat1 = d1[:, i : i + r].permute(1, 0, 2).reshape(r, -1)
                block.addcmul_(inputs, flat1 @ d2.permute(1, 0, 2).reshape(n2, -1).T)
    return out


def _ntk_blocked(
    model: Model, params: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None, max_memory: int, full: bool
) -> torch.Tensor:
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    n_params, itemsize = params.numel(), params.element_size()
    k = 1 if model(params.detach(), x1[:1]).dim() == 1 else model(params.detach(), x1[:1]).shape[1]
    m = k if full else 1

    def rows_of(jac: torch.Tensor) -> torch.Tensor:  # (n, k, P) -> the kernel's factor rows
        return jac.reshape(len(jac) * k, n_params) if full else jac.reshape(len(jac), k * n_params)

    out = params.new_empty(len(x1) * m, len(x2) * m)
    row = k * n_params  # numbers per sample
    if len(x2) * row * itemsize <= max_memory // 2:
        j2 = rows_of(jacobian(model, params, x2))
        rows = _block_rows(row, itemsize, max_memory // 2, 1)
        for i in range(0, len(x1), rows):
            j1 = j2[i * m : (i + rows) * m] if symmetric else rows_of(jacobian(model, params, x1[i : i + rows]))
            out[i * m : (i + rows) * m] = j1 @ j2.T
        return out
    rows = _block_rows(row, itemsize, max_memory, 2)
    for i in range(0, len(x1), rows):
        j1 = rows_of(jacobian(model, params, x1[i : i + rows]))
        for j in range(0, len(x2), rows):
            target = out[i * m : (i + rows) * m, j * m : (j + rows) * m]
            if symmetric and j < i:
                target.copy_(out[j * m : (j + rows) * m, i * m : (i + rows) * m].T)
                continue
            j2 = j1 if (symmetric and i == j) else rows_of(jacobian(model, params, x2[j : j + rows]))
            target.copy_(j1 @ j2.T)
    return out


def ntk_loop(model: Model, params: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor | None = None,
             outputs: str = "trace") -> torch.Tensor:
    """The same kernel from one autograd backward per sample and output: the slow, obvious reference."""
    x2 = x1 if x2 is None else x2

    def grads(x: torch.Tensor) -> torch.Tensor:  # (n, k, P)
        rows = []
        for xi in x:
            w = params.detach().requires_grad_(True)
            f = model(w, xi[None])[0].reshape(-1)
            rows.append(torch.stack([torch.autograd.grad(fc, w, retain_graph=True)[0] for fc in f]))
        return torch.stack(rows)

    g1 = grads(x1)
    g2 = g1 if x2 is x1 else grads(x2)
    if outputs == "full":
        return g1.reshape(-1, g1.shape[-1]) @ g2.reshape(-1, g2.shape[-1]).T
    return torch.einsum("icp,jcp->ij", g1, g2)


def relative_change(theta: torch.Tensor, theta0: torch.Tensor) -> float:
    """||Theta - Theta0||_F / ||Theta0||_F (seed 001: the kernel evolution of feature training)."""
    return float((theta - theta0).norm() / theta0.norm())


def _targets(y: torch.Tensor, outputs: int) -> torch.Tensor:
    """Targets as a matrix (n, k): +-1 labels as one column, integer classes one-hot."""
    if outputs == 1:
        return y.reshape(-1, 1).to(torch.float64)
    return torch.nn.functional.one_hot(y.reshape(-1).long(), outputs).to(torch.float64)


def alignment(theta: torch.Tensor, y: torch.Tensor, outputs: int = 1) -> float:
    """Kernel-target alignment (Cristianini et al. 2002) of Theta with the labels y:

        A = <Theta, Y Y^T>_F / (||Theta||_F ||Y Y^T||_F)

    which for one output is y^T Theta y / (||Theta||_F ||y||^2). For k outputs Y is the
    one-hot target matrix (n, k): with the trace kernel (n x n) as written; with the full
    kernel (nk x nk, output index fastest) Y Y^T is replaced by vec(Y) vec(Y)^T, giving
    vec(Y)^T Theta vec(Y) / (||Theta||_F ||Y||_F^2). In [-1, 1]; it grows as the kernel
    learns the task (feature training) and stays put in the lazy regime."""
    theta = theta.to(torch.float64)
    targets = _targets(y, outputs)
    if theta.shape[0] == targets.numel() and outputs > 1:  # the full kernel
        v = targets.reshape(-1)
        return float(v @ theta @ v / (theta.norm() * v.dot(v)))
    gram = targets @ targets.T
    return float((theta * gram).sum() / (theta.norm() * gram.norm()))


def effective_rank(eigenvalues: torch.Tensor) -> float:
    """exp of the entropy of the normalised spectrum p_i = lambda_i / sum lambda (Roy and
    Vetterli 2007): n for a flat spectrum, 1 for a single direction. Negative rounding
    noise in the eigenvalues of a PSD kernel is clipped to 0."""
    lam = eigenvalues.to(torch.float64).clamp(min=0.0)
    p = lam / lam.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
