"""Exponential Rosenbrock steppers: exact for the linearised flow, order 4 or 5 overall.

Linearising dy/dt = F(y) at y_n with its Jacobian J = dF/dy(y_n) and integrating the linear
part exactly gives the exponential Rosenbrock methods of Hochbruck, Ostermann and
Schweitzer, "Exponential Rosenbrock-type methods", SIAM J. Numer. Anal. 47 (2009) 786-803.
Two three-stage schemes (:class:`Scheme`) with the nonlinear remainders
D_i = F(U_i) - F(y_n) - J (U_i - y_n):

* exprb43 (their order-4 scheme, with an embedded order-3 solution):

      U_2     = y_n + (h/2) phi_1(h J / 2) F(y_n)
      U_3     = y_n + h phi_1(h J) F(y_n) + h phi_1(h J) D_2
      y_{n+1} = y_n + h phi_1(h J) F(y_n) + h (16 phi_3 - 48 phi_4)(h J) D_2 + h (-2 phi_3 + 12 phi_4)(h J) D_3

  the embedded solution has 16 phi_3 D_2 - 2 phi_3 D_3 in the last terms, so the error
  estimate is 12 h phi_4(h J) (D_3 - 4 D_2);
* exprb53s3 (Luan and Ostermann, J. Comput. Appl. Math. 255 (2014) 417-431; order 5):

      U_2     = y_n + (h/2) phi_1(h J / 2) F(y_n)
      U_3     = y_n + (9h/10) phi_1(9 h J / 10) F(y_n) + h (27/25 phi_3(h J / 2) + 729/125 phi_3(9 h J / 10)) D_2
      y_{n+1} = y_n + h phi_1(h J) F(y_n) + h (18 phi_3 - 60 phi_4)(h J) D_2 + h (-250/81 phi_3 + 500/27 phi_4)(h J) D_3

  with the embedded third-order solution h phi_3(h J) (2 D_2 + 150/81 D_3) in the last terms.

On a gradient flow, J = -H is stiff (a few curvature outliers far above a bulk near zero),
and no stiffness limits h: a linear flow is integrated exactly at any h, so h follows the
accuracy asked for.

The phi functions act through one Krylov space of J built from F(y_n)
(:class:`~solvers.krylov.JacobianKrylov`; m Jacobian products by finite differences, m
grown until the Krylov coefficients of h phi_1(h J) F(y_n) change by less than
``krylov_tol`` of their size; phi_1(c h J) F for c < 1 lives in the same space). A
remainder D_i acts through its projection on that space, and phi_k(0) = 1/k! on the rest
(the directions the space missed are those where h J is small); in U_3, J is applied to
the projected part only (the Arnoldi relation: no evaluation), which saved one evaluation
per step at no loss of accuracy on the digits problems (measured with exprb43: 1312
evaluations at error 1.2e-5 against 1450 at 1.0e-5 with the missing product taken). A
step of either scheme costs m products, the evaluations at U_2 and U_3, and the one at
y_{n+1} (the next step's start): m + 3. A step is judged before y_{n+1} is evaluated (the
embedded estimate needs no evaluation there: :class:`~solvers.adaptive.Adaptive` asks the
controller first), so a rejected one costs m + 2; its retry from the same y_n reuses the
Krylov space. The schemes treat F as autonomous; gradient and momentum flows are.

Measured on the digits problems (t = 10^4, gradient flow): exprb53s3 needs 1.3-1.5x fewer
evaluations than exprb43 at errors of f(T) of 1e-5-1e-6 at alpha = 1e-2, 1, 1e2; on the
momentum flow (complex eigenvalues) it needed 1.2-1.3x more, so gflow keeps exprb43 there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .dense import Interpolant
from .krylov import JacobianKrylov, phi_vectors
from .problem import CountingProblem, Evaluation

_FACTORIALS = np.array([math.factorial(k) for k in range(1, 5)], dtype=float)  # phi_k(0) = 1 / k!


@dataclass(frozen=True)
class Scheme:
    """A three-stage exponential Rosenbrock scheme with nodes 0, c2, c3:

        U_2     = y_n + c2 h phi_1(c2 h J) F(y_n)
        U_3     = y_n + c3 h phi_1(c3 h J) F(y_n) + h sum_(a, k, s) a phi_k(s h J) D_2     (``stage3``)
        y_{n+1} = y_n + h phi_1(h J) F(y_n) + h (b_2(hJ) D_2 + b_3(hJ) D_3)

    with b_2, b_3 the unique combinations of phi_3, phi_4 that satisfy the stiff order
    conditions of orders 3 and 4, sum_i b_i c_i^2 = 2 phi_3 and sum_i b_i c_i^3 = 6 phi_4
    (Hochbruck, Ostermann, Schweitzer 2009; Luan, Ostermann 2014, Table 1). The embedded
    solution replaces b_i by ``embedded``_i phi_3, with sum_i e_i c_i^2 = 2 (order 3).
    """

    name: str
    c2: float
    c3: float
    stage3: tuple[tuple[float, int, float], ...]
    embedded: tuple[float, float]
    order: int

    def weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(alpha, beta): b_i(Z) = alpha_i phi_3(Z) + beta_i phi_4(Z), i = 2, 3."""
        c2, c3 = self.c2, self.c3
        det = c2**2 * c3**2 * (c3 - c2)
        return np.array([2 * c3**3, -2 * c2**3]) / det, np.array([-6 * c3**2, 6 * c2**2]) / det


EXPRB43 = Scheme("exprb43", 0.5, 1.0, ((1.0, 1, 1.0),), (16.0, -2.0), order=4)
"""Hochbruck, Ostermann, Schweitzer (2009): order 4, U_3 = y_n + h phi_1(hJ) (F + D_2)."""

EXPRB53S3 = Scheme("exprb53s3", 0.5, 0.9, ((27 / 25, 3, 0.5), (729 / 125, 3, 0.9)), (2.0, 150 / 81), order=5)
"""Luan, Ostermann, "Exponential Rosenbrock methods of order five", J. Comput. Appl. Math.
255 (2014) 417-431: order 5 (the fifth-order conditions in their weakened form) at the
same three evaluations per step as exprb43."""


class _Remainder:
    """A nonlinear remainder D split into its coordinates in the Krylov space and the rest,
    with phi_1..phi_4(s H) applied to the coordinates once per s."""

    def __init__(self, space: JacobianKrylov, vector: torch.Tensor) -> None:
        self.space = space
        self.inside, self.outside = space.project(vector)

    def phis(self, s: float) -> tuple[np.ndarray, torch.Tensor]:
        """(coordinates of phi_1..phi_4(s J) D in the space, as columns; D's outside part)."""
        return phi_vectors(s * self.space.square(len(self.inside)), self.inside, 4), self.outside


class ExponentialRosenbrock:
    """A three-stage exponential Rosenbrock stepper (``scheme``: :data:`EXPRB53S3`, order 5,
    or :data:`EXPRB43`, order 4; both with an embedded order-3 solution); pair it with
    ``LocalError(estimate=stepper.error_estimate, order=3)``.

    ``krylov_tol``: relative change of the Krylov coefficients at which m stops growing;
    a space that reaches ``max_krylov`` unconverged adds its last change to the error
    estimate, so the controller shortens the step. Memory: up to ``max_krylov + 1``
    vectors of the state's size.

    ``stiff_scheme``, ``stiff_limit``: a step with h rho > stiff_limit, rho the largest
    |eigenvalue| of the Krylov matrix H_m (the step's Ritz values: free), is taken with
    ``stiff_scheme`` instead. exprb53s3 satisfies its fifth-order conditions only in a
    weakened form, and far into the stiff range its error estimate can miss its error
    (measured on digits at alpha = 1e2, steps with h rho ~ 300-400: f(T) error 9.6e-4 at
    rtol 2e-4, against 3.0e-5 with exprb43 on those steps and a limit of 150).
    """

    embedded_order = 3

    def __init__(self, krylov_tol: float = 1e-4, max_krylov: int = 50, scheme: Scheme = EXPRB53S3,
                 stiff_scheme: Scheme | None = None, stiff_limit: float = 150.0) -> None:
        if not krylov_tol > 0:
            raise ValueError(f"krylov_tol = {krylov_tol!r}: must be > 0")
        if max_krylov < 1:
            raise ValueError(f"max_krylov = {max_krylov!r}: need at least one Krylov vector")
        if not stiff_limit > 0:
            raise ValueError(f"stiff_limit = {stiff_limit!r}: must be > 0")
        self.krylov_tol, self.max_krylov, self.scheme = krylov_tol, max_krylov, scheme
        self.stiff_scheme, self.stiff_limit = stiff_scheme, stiff_limit
        self.order = min(scheme.order, stiff_scheme.order) if stiff_scheme else scheme.order
        self.krylov = 0  # m of the last step
        self._space: JacobianKrylov | None = None
        self._error: tuple[Evaluation, float, torch.Tensor] | None = None
        self._dense: tuple | None = None  # (ev, dt, space, D_2, D_3, scheme) of the last step

    def _coefficients(self, space: JacobianKrylov, h: float) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates of h phi_1(h J) F in V_m, m grown until converged; and their last change."""
        if space.dim == 0 and not space.extend():
            return np.zeros(0), np.zeros(0)  # F(y_n) = 0
        coef = self._flux(space, h)
        change = coef - np.append(self._flux(space, h, space.dim - 1), 0.0) if space.dim > 1 else coef
        while np.linalg.norm(change) > self.krylov_tol * np.linalg.norm(coef) and space.extend():
            previous, coef = coef, self._flux(space, h)
            change = coef - np.append(previous, 0.0)
        return coef, (np.zeros_like(coef) if space.exhausted else change)

    @staticmethod
    def _e1(space: JacobianKrylov, m: int) -> np.ndarray:
        """||F|| e_1: F's coordinates in the space."""
        e1 = np.zeros(m)
        e1[0] = space.norm_b
        return e1

    def _flux(self, space: JacobianKrylov, s: float, m: int | None = None) -> np.ndarray:
        """Coordinates of s phi_1(s J) F in the first m (default: all) basis vectors."""
        m = space.dim if m is None else m
        return s * phi_vectors(s * space.square(m), self._e1(space, m), 1)[:, 0]

    @staticmethod
    def _ritz(space: JacobianKrylov) -> np.ndarray:
        """The eigenvalues of the Arnoldi matrix H_m: the space's Ritz values of J."""
        return np.linalg.eigvals(space.square(space.dim))

    def step(self, ev: Evaluation, dt: float, problem: CountingProblem) -> torch.Tensor:
        if self._space is None or self._space.ev is not ev:  # a retry keeps its space
            # The last step's space, remainders and start are done with: not held through this
            # step (at a million parameters, 15 state-sized vectors of a run's peak); its
            # matrix is reused. The new space is sized for the last step's dimension and one
            # more (m changes by a row or two between steps, and a basis grows when full).
            done, self._space, self._error, self._dense = self._space, None, None, None
            self._space = JacobianKrylov(problem, ev, ev.dydt, self.max_krylov, expected_dim=self.krylov + 1,
                                         reuse=done)
            del done
        space = self._space
        coef, change = self._coefficients(space, dt)
        self.krylov = space.dim
        if not len(coef):  # F(y_n) = 0: at rest
            self._error = (ev, dt, torch.zeros_like(ev.y))
            self._dense = (ev, dt, None, None, None, self.scheme)
            return ev.y.clone()
        h, scheme = dt, self.scheme
        if self.stiff_scheme is not None:
            rho = float(np.abs(self._ritz(space)).max())
            if h * rho > self.stiff_limit:
                scheme = self.stiff_scheme

        def remainder(c: float, inside: np.ndarray, outside: Sequence[tuple[float, torch.Tensor]] = ()) -> _Remainder:
            """D at U = y_n + V inside + sum_i w_i o_i (``outside``: the (w_i, o_i)):
            F(U) - F(y_n) - J V inside (J on the space only). U is built in place and the sum
            over ``outside`` lives only until added, so that neither is held through the
            evaluation (each a state-sized vector)."""
            u = space.combine(inside).add_(ev.y)
            if outside:
                u.add_(sum(w * o for w, o in outside))
            d = torch.sub(problem.evaluate(ev.t + c * h, u).dydt, ev.dydt)  # not in place: F(U) is the problem's
            return _Remainder(space, d.sub_(space.apply(inside)))

        d2 = remainder(scheme.c2, self._flux(space, scheme.c2 * h))
        inside3, outside3 = self._flux(space, scheme.c3 * h), []
        for a, k, s in scheme.stage3:
            p, o = d2.phis(s * h)
            inside3 = inside3 + h * a * p[:, k - 1]
            outside3.append((h * a / _FACTORIALS[k - 1], o))
        d3 = remainder(scheme.c3, inside3, outside3)
        (p2, o2), (p3, o3) = d2.phis(h), d3.phis(h)
        (a2, a3), (b2, b3) = scheme.weights()
        (e2, e3) = scheme.embedded
        inside = coef + h * (a2 * p2[:, 2] + b2 * p2[:, 3] + a3 * p3[:, 2] + b3 * p3[:, 3])
        # y_{n+1} minus the embedded solution: h sum_i ((alpha_i - e_i) phi_3 + beta_i phi_4) D_i,
        # plus the Krylov coefficients' last change; both vectors in one pass over the basis.
        error = h * ((a2 - e2) * p2[:, 2] + b2 * p2[:, 3] + (a3 - e3) * p3[:, 2] + b3 * p3[:, 3]) + change
        pair = space.combine(np.stack([inside, error], axis=1))
        estimate = pair[1].add_(o2, alpha=h * ((a2 - e2) / 6 + b2 / 24)).add_(o3, alpha=h * ((a3 - e3) / 6 + b3 / 24))
        # y_{n+1} and the estimate get storage of their own: a row of ``pair`` would keep
        # the other row alive, y_{n+1} through the next step, the estimate through the
        # evaluation at y_{n+1} (the estimate is freed once the controller has read it:
        # error_estimate hands it over).
        step = torch.add(pair[0], ev.y)
        self._error = (ev, dt, estimate.clone())
        self._dense = (ev, dt, space, d2, d3, scheme)
        return step.add_(o2, alpha=h * (a2 / 6 + b2 / 24)).add_(o3, alpha=h * (a3 / 6 + b3 / 24))

    def diagnostics(self) -> dict[str, float]:
        """What the last step's Krylov space tells for free: ``ritz_max``, the largest
        Ritz value of -J on the space K_m(J, F(y_n)) (the real part of the eigenvalues of
        its Arnoldi matrix; -J = H, the loss Hessian, for gradient flow). Lanczos'
        extreme Ritz values converge first, so with m >= 4-5 it approaches the sharpness
        lambda_max, from below; NaN at rest (no space)."""
        space = self._space
        if space is None or space.dim == 0:
            return {"ritz_max": float("nan")}
        return {"ritz_max": float(np.max(-self._ritz(space).real))}

    def error_estimate(self, before: Evaluation, after: Evaluation, h: float) -> torch.Tensor:
        """The local error estimate of the step just taken from ``before`` with size h:
        12 h phi_4(h J) (D_3 - 4 D_2), plus the Krylov coefficients' last change if unconverged.
        Handed over: the stepper keeps no reference, so that the vector is freed once the
        caller is done with it; asked again, it raises."""
        if self._error is None or self._error[0] is not before or self._error[1] != h:
            raise RuntimeError("error_estimate asks about a step this stepper did not just take (once per step)")
        estimate, self._error = self._error[2], None
        return estimate

    # It reads nothing of ``after``: LocalError decides before y_{n+1} is evaluated.
    error_estimate.embedded = True

    def interpolant(self, before: Evaluation, after: Evaluation, h: float) -> Interpolant:
        """The continuous output of the step just taken from ``before`` to ``after``. With
        s = theta h in (0, h], the weights b_i(theta) of D_2 and D_3 that satisfy the order
        conditions 3 and 4 at theta (sum_i b_i c_i^2 = 2 theta^3 phi_3, sum_i b_i c_i^3 =
        6 theta^4 phi_4, of (theta h J)) are theta^3 (alpha_i phi_3 + theta beta_i phi_4) with
        the scheme's alpha, beta (:meth:`Scheme.weights`; exprb43: alpha = (16, -2), beta = (-48, 12)):

            y(t_n + s)  = y_n + s phi_1(s J) F + (s^3 / h^2) sum_i (alpha_i phi_3 + theta beta_i phi_4)(s J) D_i,
            y'(t_n + s) = e^{s J} F + (s^2 / h^2) sum_i (alpha_i phi_2 + theta beta_i phi_3)(s J) D_i

        (d/ds [s^k phi_k(s J)] = s^(k-1) phi_(k-1)(s J)): the step itself at s = h, fourth
        order in between. Evaluated in the step's Krylov space: small matrix exponentials,
        no evaluation of the problem."""
        ev, dt, space, d2, d3, scheme = self._dense or (None,) * 6
        if ev is not before or dt != h:
            raise RuntimeError("interpolant asks about a step this stepper did not just take")
        if space is None:  # at rest
            return lambda t: (ev.y, ev.dydt)
        square = space.square(space.dim)
        e1 = self._e1(space, space.dim)
        (a2, a3), (b2, b3) = scheme.weights()

        def at(t: float) -> tuple[torch.Tensor, torch.Tensor]:
            s = t - ev.t
            if s <= 0:
                return ev.y, ev.dydt
            theta = s / dt
            phi_f = self._flux(space, s)  # s phi_1(sH) ||F|| e1
            exp_f = e1 + square @ phi_f  # e^{sH} = I + sH phi_1(sH)
            (p2, o2), (p3, o3) = d2.phis(s), d3.phis(s)
            inside_y = phi_f + s * theta**2 * (a2 * p2[:, 2] + theta * b2 * p2[:, 3] + a3 * p3[:, 2] + theta * b3 * p3[:, 3])
            inside_dy = exp_f + theta**2 * (a2 * p2[:, 1] + theta * b2 * p2[:, 2] + a3 * p3[:, 1] + theta * b3 * p3[:, 2])
            y, dy = space.combine(np.stack([inside_y, inside_dy], axis=1))  # one pass over the basis
            f = _FACTORIALS
            y.add_(ev.y).add_(o2, alpha=s * theta**2 * (a2 / f[2] + theta * b2 / f[3]))
            y.add_(o3, alpha=s * theta**2 * (a3 / f[2] + theta * b3 / f[3]))
            dy.add_(o2, alpha=theta**2 * (a2 / f[1] + theta * b2 / f[2])).add_(o3, alpha=theta**2 * (a3 / f[1] + theta * b3 / f[2]))
            return y, dy

        return at
