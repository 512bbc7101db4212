"""SUNDIALS CVODE behind the method contract: the classic stiff integrator, as an anchor.

CVODE (Hindmarsh et al., ACM TOMS 31 (2005) 363-396) integrates with variable-order,
variable-step BDF (orders 1-5, fixed-leading-coefficient form). Each step solves its
implicit equation by Newton iterations whose linear systems (I - gamma J) x = b are solved
matrix-free by GMRES, every Jacobian-vector product J v a difference quotient
(F(y + sigma v) - F(y)) / sigma: one right-hand side. So its cost is counted in the same
unit as every other method's: right-hand sides and Jacobian products together.

Through scikit-sundae (``pip install gflow[stiff]``), stepping one internal step at a time
(CVODE's ONE_STEP mode), landing on t_stop exactly (``tstop``). CVODE never evaluates its
accepted (corrected) state, which observers need (loss, gradient, outputs): that one
evaluation per step is made with :meth:`CountingProblem.observe`, outside the method's
count. Save times inside a step are served by CVODE's own interpolating polynomial (its
Nordsieck history, order q), with the derivative from cubic Hermite between the ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .dense import Interpolant, hermite_pair
from .events import Stop
from .method import OnStep, Segment
from .problem import CountingProblem, Evaluation


def _cvode():
    try:
        from sksundae.cvode import CVODE
    except ImportError:
        raise ImportError("the SUNDIALS CVODE method needs scikit-sundae: pip install 'gflow[stiff]'") from None
    return CVODE


@dataclass(frozen=True)
class Sundials:
    """CVODE's BDF (orders 1 to ``max_order``) with Newton-GMRES (``krylov_dim`` basis
    vectors at most; CVODE's default 5) and difference-quotient Jacobian products, under its
    own error control: component-wise, RMS of err_i / (atol + rtol |y_i|) <= 1."""

    rtol: float = 1e-6
    atol: float = 1e-9
    max_order: int = 5
    krylov_dim: int = 5
    interpolates: bool = True  # CVODE always steps past save times and interpolates

    def __post_init__(self) -> None:
        if not (self.rtol > 0 and self.atol >= 0):
            raise ValueError(f"rtol = {self.rtol!r}, atol = {self.atol!r}: need rtol > 0 and atol >= 0")
        if not 1 <= self.max_order <= 5:
            raise ValueError(f"max_order = {self.max_order!r}: BDF has orders 1 to 5")

    def advance(
        self, problem: CountingProblem, ev: Evaluation, t_stop: float, dt: float | None, on_step: OnStep
    ) -> Segment:
        like = ev.y

        def rhs(t: float, y: np.ndarray, yp: np.ndarray) -> None:
            yp[:] = problem.evaluate(float(t), torch.from_numpy(np.array(y)).to(like)).dydt.cpu().numpy()

        solver = _cvode()(rhs, method="BDF", linsolver="gmres", krylov_dim=self.krylov_dim, rtol=self.rtol,
                          atol=self.atol, max_order=self.max_order, first_step=dt or 0.0, max_num_steps=10**9)
        solver.init_step(ev.t, ev.y.detach().cpu().double().numpy())
        previous = ev
        while previous.t < t_stop:
            result = solver.step(t_stop, method="onestep", tstop=t_stop)
            if not result.success:
                return Segment(previous, None, Stop("failed", f"CVODE: {result.message} at t = {previous.t:.6g}"))
            t1 = t_stop if float(result.t) >= t_stop else float(result.t)
            if t1 <= previous.t:
                # After an interpolation (tout behind tn), CVODE's ONE_STEP mode first returns
                # the step it had already taken: not a new step.
                continue
            new = problem.observe(t1, torch.from_numpy(np.array(result.y)).to(like))
            stop = on_step(new, t1 - previous.t, 0, {}, _interpolant(solver, previous, new, like), None)
            previous = new
            if stop:
                return Segment(new, None, stop)
        return Segment(previous, None, None)


def _interpolant(solver: object, before: Evaluation, after: Evaluation, like: torch.Tensor) -> Interpolant:
    def at(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.from_numpy(np.array(solver.step(t).y)).to(like)
        return y, hermite_pair(t, before.t, before.y, before.dydt, after.t, after.y, after.dydt)[1]

    return at
