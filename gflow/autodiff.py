"""Directional derivatives of a network where PyTorch's fused kernels have no rule for them.

A Jacobian-vector product J u = d/ds f(w + s u) |_{s=0} is one forward-mode pass
(``torch.func.jvp``) when every operation of the network has a forward-mode rule. Fused
kernels often have none: multi-head attention's fast path (``_native_multi_head_attention``),
the transformer encoder layer's (``_transformer_encoder_layer_fwd``), the flash attention of
``scaled_dot_product_attention``. Then the same product is taken by reverse over reverse:
with v a dummy cotangent,

    J u = grad_v ( (J^T v) . u ),

J^T v being one backward pass with its graph kept (the "double-backward trick"), so J is
never formed. Reverse over reverse needs the backward of each backward: the fused attention
kernels lack that too, so the reverse path (and every Hessian-vector product,
:func:`composite_attention`) runs attention by its composite definition, which PyTorch
differentiates to any order; with gradients enabled and the parameters requiring them,
the layers' fast paths are not taken.

:class:`JVP` chooses per model, on its first product, and keeps the choice (``mode``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

FORWARD, REVERSE = "forward", "reverse-over-reverse"

Function = Callable[[torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def composite_attention() -> Iterator[None]:
    """``scaled_dot_product_attention`` by its composite (math) definition, differentiable to
    any order: PyTorch's flash kernel has no derivative of its backward (Hessian-vector
    products, reverse over reverse)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def reverse_jvp(f: Function, w: torch.Tensor, u: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(w), J u) by reverse over reverse: J u = grad_v ((J^T v) . u) at any v (zero here)."""
    with torch.enable_grad(), composite_attention():
        p = w if w.requires_grad else w.detach().requires_grad_(True)
        out = f(p)
        v = torch.zeros_like(out, requires_grad=True)
        (pulled,) = torch.autograd.grad(out, p, v, create_graph=True)
        (pushed,) = torch.autograd.grad(pulled, v, u, create_graph=create_graph)
    return (out if create_graph else out.detach()), (pushed if create_graph else pushed.detach())


class JVP:
    """Jacobian-vector products of one model: forward mode, or reverse over reverse where an
    operation has no forward-mode rule (found on the first product and then kept: ``mode``
    is None before it, then :data:`FORWARD` or :data:`REVERSE`)."""

    def __init__(self) -> None:
        self.mode: str | None = None

    def _try_forward(self, forward: Callable[[], tuple[torch.Tensor, torch.Tensor]]):
        if self.mode == REVERSE:
            return None
        try:
            result = forward()
        except NotImplementedError:  # "Trying to use forward AD with <op> that does not support it"
            self.mode = REVERSE
            return None
        self.mode = FORWARD
        return result

    def __call__(self, f: Function, w: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(w), J u) with J = df/dw at w; differentiable in w and u where gradients are on."""
        result = self._try_forward(lambda: torch.func.jvp(f, (w,), (u,)))
        keep = torch.is_grad_enabled() and (w.requires_grad or u.requires_grad)
        return result if result is not None else reverse_jvp(f, w, u, create_graph=keep)

    def second(self, f: Function, w: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(J u, u^T (d^2 f) u): the first and second derivatives of s -> f(w + s u) at s = 0.

        The second is taken as a_i = d/dc_i [ u . grad_w ((J^T c) . u) ]: two backward passes
        through the network and one more in the cotangent c, which enters linearly; the first,
        J u = grad_c ((J^T c) . u), from the same graph. Neither
        forward mode over forward mode nor reverse over reverse over the product J u gives
        it right for ``nn.LayerNorm`` (torch 2.13: 3% and 6% off the per-output u^T H_i u
        on a small MLP, whose Hessian-vector products are right to rounding): their
        formulas differentiate LayerNorm's saved statistics once too few times."""
        with torch.enable_grad(), composite_attention():
            p = w.detach().requires_grad_(True)
            out = f(p)
            c = torch.zeros_like(out, requires_grad=True)
            (pulled,) = torch.autograd.grad(out, p, c, create_graph=True)
            along = pulled @ u  # c . (J u): its gradient in c is the velocity J u
            (velocity,) = torch.autograd.grad(along, c, retain_graph=True)
            # a part of f linear in w leaves no graph to differentiate: its curvature is zero
            (curved,) = torch.autograd.grad(along, p, create_graph=True, allow_unused=True)
            if curved is None or not curved.requires_grad:
                return velocity.detach(), torch.zeros_like(out).detach()
            (acceleration,) = torch.autograd.grad(curved @ u, c, allow_unused=True, materialize_grads=True)
        return velocity.detach(), acceleration
