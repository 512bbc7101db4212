"""An exponential Rosenbrock stepper: exact for the linearised flow, third order overall.

Linearising dy/dt = F(y) at y_n with its Jacobian J_n = dF/dy(y_n) and integrating the
linear part exactly gives the scheme exprb32 of Hochbruck, Ostermann and Schweitzer,
"Exponential Rosenbrock-type methods", SIAM J. Numer. Anal. 47 (2009) 786-803:

    U       = y_n + h phi_1(h J_n) F(y_n)                       (exponential Rosenbrock-Euler, order 2)
    D       = F(U) - F(y_n) - J_n (U - y_n)                     (the nonlinear remainder at U)
    y_{n+1} = U + 2 h phi_3(h J_n) D                            (order 3)

and 2 h phi_3(h J_n) D is the error estimate of the embedded second-order solution U. On
a gradient flow, J_n = -H is stiff (a few curvature outliers far above a bulk near zero),
and no stiffness limits h: a linear flow is integrated exactly at any h, so h follows the
accuracy asked for. The phi functions act through a Krylov space of J_n
(:class:`~solvers.krylov.JacobianKrylov`): a step costs m Jacobian products by finite
differences, one evaluation at U and one at y_{n+1} (the next step's start), with m
grown until the Krylov coefficients of h phi_1(h J_n) F(y_n) change by less than
``krylov_tol`` of their size. A rejected step retries from the same y_n and reuses the
Krylov space. The scheme treats F as autonomous; for gradient and momentum flows it is.

phi_3(h J_n) D uses the Krylov space of F(y_n) for D's component inside it and
phi_3(0) = 1/6 for the remainder (the directions that space missed are those where
h J_n is small), so the step costs no second space.
"""

from __future__ import annotations

import numpy as np
import torch

from .dense import Interpolant
from .krylov import JacobianKrylov, phi_vectors
from .problem import CountingProblem, Evaluation


class ExponentialRosenbrock:
    """The exprb32 stepper (order 3, embedded order 2); pair it with
    ``LocalError(estimate=stepper.error_estimate)``.

    ``krylov_tol``: relative change of the Krylov coefficients at which m stops growing;
    a space that reaches ``max_krylov`` unconverged adds its last change to the error
    estimate, so the controller shortens the step. Memory: up to ``max_krylov + 1``
    vectors of the state's size.
    """

    order = 3

    def __init__(self, krylov_tol: float = 1e-4, max_krylov: int = 50) -> None:
        if not krylov_tol > 0:
            raise ValueError(f"krylov_tol = {krylov_tol!r}: must be > 0")
        if max_krylov < 1:
            raise ValueError(f"max_krylov = {max_krylov!r}: need at least one Krylov vector")
        self.krylov_tol, self.max_krylov = krylov_tol, max_krylov
        self.krylov = 0  # m of the last step
        self._space: JacobianKrylov | None = None
        self._error: tuple[Evaluation, float, torch.Tensor] | None = None
        self._dense: tuple[Evaluation, float, JacobianKrylov, np.ndarray, torch.Tensor] | None = None

    def _coefficients(self, space: JacobianKrylov, h: float) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates of h phi_1(h J) F in V_m, m grown until converged; and their last change."""
        def coefficients(m: int) -> np.ndarray:
            e1 = np.zeros(m)
            e1[0] = space.norm_b
            return h * phi_vectors(h * space.square(m), e1, 1)[:, 0]

        if space.dim == 0 and not space.extend():
            return np.zeros(0), np.zeros(0)  # F(y_n) = 0
        coef = coefficients(space.dim)
        change = coef - np.append(coefficients(space.dim - 1), 0.0) if space.dim > 1 else coef
        while np.linalg.norm(change) > self.krylov_tol * np.linalg.norm(coef) and space.extend():
            previous, coef = coef, coefficients(space.dim)
            change = coef - np.append(previous, 0.0)
        return coef, (np.zeros_like(coef) if space.exhausted else change)

    def step(self, ev: Evaluation, dt: float, problem: CountingProblem) -> torch.Tensor:
        if self._space is None or self._space.ev is not ev:  # a retry keeps its space
            self._space = JacobianKrylov(problem, ev, ev.dydt, self.max_krylov)
        space = self._space
        coef, change = self._coefficients(space, dt)
        self.krylov = space.dim
        if not len(coef):  # F(y_n) = 0: at rest
            self._error = (ev, dt, torch.zeros_like(ev.y))
            self._dense = (ev, dt, None, None, None)
            return ev.y.clone()
        du = space.combine(coef)
        u = ev.y + du
        remainder = problem.evaluate(ev.t + dt, u).dydt - ev.dydt - space.apply(coef)
        inside, outside = space.project(remainder)
        correction = 2 * dt * (space.combine(phi_vectors(dt * space.square(space.dim), inside, 3)[:, 2]) + outside / 6)
        self._error = (ev, dt, correction + space.combine(change))
        self._dense = (ev, dt, space, inside, outside)
        return u + correction

    def interpolant(self, before: Evaluation, after: Evaluation, h: float) -> Interpolant:
        """The continuous output of the step just taken from ``before`` to ``after``: with the
        nonlinear remainder taken quadratic in time along the step, r(s) = (s / h)^2 D,
        variation of constants gives, for 0 < s <= h,

            y(t_n + s)  = y_n + s phi_1(s J) F_n + 2 (s^3 / h^2) phi_3(s J) D,
            y'(t_n + s) = e^{s J} F_n + 2 (s^2 / h^2) phi_2(s J) D,

        which at s = h is the step itself (exprb32's y_{n+1}), third order like it. Evaluated
        in the step's own Krylov space (a small matrix exponential per time asked, no
        evaluation of the problem)."""
        ev, dt, space, inside, outside = self._dense or (None, None, None, None, None)
        if ev is not before or dt != h:
            raise RuntimeError("interpolant asks about a step this stepper did not just take")
        if space is None:  # at rest
            return lambda t: (ev.y, ev.dydt)
        square = space.square(space.dim)
        e1 = np.zeros(space.dim)
        e1[0] = space.norm_b

        def at(t: float) -> tuple[torch.Tensor, torch.Tensor]:
            s = t - ev.t
            if s <= 0:
                return ev.y, ev.dydt
            phi_f = phi_vectors(s * square, e1, 1)[:, 0]  # phi_1(sH) ||F|| e1
            phi_d = phi_vectors(s * square, inside, 3)  # phi_1..phi_3(sH) c
            exp_f = e1 + s * (square @ phi_f)  # e^{sH} = I + sH phi_1(sH)
            theta = s / dt
            y = ev.y + space.combine(s * phi_f) + (2 * s * theta**2) * (space.combine(phi_d[:, 2]) + outside / 6)
            dy = space.combine(exp_f) + (2 * theta**2) * (space.combine(phi_d[:, 1]) + outside / 2)
            return y, dy

        return at

    def error_estimate(self, before: Evaluation, after: Evaluation, h: float) -> torch.Tensor:
        """The local error estimate of the step just taken from ``before`` with size h:
        2 h phi_3(h J) D, plus the Krylov coefficients' last change if unconverged."""
        if self._error is None or self._error[0] is not before or self._error[1] != h:
            raise RuntimeError("error_estimate asks about a step this stepper did not just take")
        return self._error[2]
