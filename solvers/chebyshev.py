"""Runge-Kutta-Chebyshev: a second-order explicit stepper with a long real stability interval.

Gradient flow dw/dt = -grad L(w) has the Jacobian -H (minus the Hessian), symmetric, so
its spectrum lies on the real axis. Late in training it is stiff: the top curvature
lambda_max ~ 1 sets a time scale far shorter than the slow directions that still move
(t ~ 10^4), and every classical explicit method is held to h <~ 2 / lambda_max by
stability (Euler 2 per evaluation, dopri5 about 3.3 per six evaluations). An s-stage
Chebyshev method is stable for h lambda_max <= beta(s) ~ 0.65 s^2, so its cost per unit
time falls like 1 / s as the slow dynamics allow long steps.

The scheme is the damped second-order RKC of van der Houwen and Sommeijer (1980), in the
form of Sommeijer, Shampine and Verwer, "RKC: an explicit solver for parabolic PDEs",
J. Comput. Appl. Math. 88 (1998) 315-326, with damping eps = 2/13:

    w0 = 1 + eps / s^2,  w1 = T_s'(w0) / T_s''(w0),  b_j = T_j''(w0) / T_j'(w0)^2 (b_0 = b_1 = b_2),
    Y_0 = y_n,  Y_1 = y_n + mu~_1 h F_0,  mu~_1 = b_1 w1,
    Y_j = (1 - mu_j - nu_j) y_n + mu_j Y_{j-1} + nu_j Y_{j-2} + mu~_j h F(Y_{j-1}) + gamma~_j h F_0,
    mu_j = 2 b_j w0 / b_{j-1},  nu_j = -b_j / b_{j-2},  mu~_j = 2 b_j w1 / b_{j-1},
    gamma~_j = -(1 - b_{j-1} T_{j-1}(w0)) mu~_j,                        y_{n+1} = Y_s.

A step costs s - 1 evaluations inside it plus the one at y_{n+1}, which the next step
reuses. The spectral radius rho of the Jacobian is estimated by a nonlinear power
iteration on F (each iterate one evaluation, warm-started from the last eigenvector) every
``refresh`` steps and whenever a step is retried; s is the smallest count with
beta(s) >= h * safety * rho.
"""

from __future__ import annotations

import math

import torch

from .problem import CountingProblem, Evaluation

DAMPING = 2.0 / 13.0


def _chebyshev(s: int, w0: float) -> tuple[list[float], list[float], list[float]]:
    """T_j(w0), T_j'(w0), T_j''(w0) for j = 0..s by the three-term recurrence."""
    t, d1, d2 = [1.0, w0], [0.0, 1.0], [0.0, 0.0]
    for j in range(2, s + 1):
        t.append(2 * w0 * t[-1] - t[-2])
        d1.append(2 * t[j - 1] + 2 * w0 * d1[-1] - d1[-2])
        d2.append(4 * d1[j - 1] + 2 * w0 * d2[-1] - d2[-2])
    return t, d1, d2


def stability_bound(s: int) -> float:
    """beta(s) = (1 + w0) T_s''(w0) / T_s'(w0): the scheme is stable for h rho <= beta(s)."""
    w0 = 1 + DAMPING / s**2
    _, d1, d2 = _chebyshev(s, w0)
    return (1 + w0) * d2[s] / d1[s]


class Chebyshev:
    """The s-stage damped RKC stepper (order 2); s chosen per step from h and rho.

    ``max_stages`` caps s (round-off grows with s); ``safety`` inflates the power
    iteration's estimate of rho, which approaches the top eigenvalue from below.
    """

    order = 2

    def __init__(self, max_stages: int = 200, refresh: int = 25, safety: float = 1.2, seed: int = 0) -> None:
        if max_stages < 2:
            raise ValueError(f"max_stages = {max_stages!r}: RKC needs at least 2 stages")
        self.max_stages, self.refresh, self.safety, self.seed = max_stages, refresh, safety, seed
        self.rho: float | None = None
        self._vector: torch.Tensor | None = None
        self._since_refresh = 0
        self._last: Evaluation | None = None
        self.stages = 0

    def spectral_radius(self, problem: CountingProblem, ev: Evaluation, iterations: int = 30) -> float:
        """rho ~ ||F(y + d v) - F(y)|| / ||d v|| iterated on v (power method on the Jacobian),
        stopped when successive estimates agree to 1%. Starts from the last eigenvector, or
        from a fixed-seed random vector the first time (deterministic)."""
        y, f = ev.y, ev.dydt
        if self._vector is None:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            self._vector = torch.randn(y.shape, generator=gen, dtype=y.dtype).to(y.device)
        scale = math.sqrt(torch.finfo(y.dtype).eps) * max(float(y.norm()), 1.0)
        v, rho = self._vector, 0.0
        for _ in range(iterations):
            v = v * (scale / float(v.norm()))
            diff = problem.evaluate(ev.t, y + v).dydt - f
            previous, rho = rho, float(diff.norm()) / scale
            if rho == 0.0 or not math.isfinite(rho):
                break
            v = diff
            if abs(rho - previous) <= 0.01 * rho:
                break
        self._vector = v
        self._since_refresh = 0
        return rho

    def stages_for(self, h: float) -> int:
        """The fewest stages s >= 2 whose stability interval holds h * safety * rho."""
        need = h * self.safety * (self.rho or 0.0)
        s = max(2, math.floor(math.sqrt(need / 0.67)))  # beta(s) < 0.67 s^2: never above the answer
        while s < self.max_stages and stability_bound(s) < need:
            s += 1
        return min(s, self.max_stages)

    def step(self, ev: Evaluation, dt: float, problem: CountingProblem) -> torch.Tensor:
        retry = ev is self._last
        if self.rho is None or retry or self._since_refresh >= self.refresh:
            self.rho = self.spectral_radius(problem, ev)
        self._last = ev
        self._since_refresh += 1
        s = self.stages = self.stages_for(dt)
        w0 = 1 + DAMPING / s**2
        t, d1, d2 = _chebyshev(s, w0)
        w1 = d1[s] / d2[s]
        b = [d2[j] / d1[j] ** 2 if j >= 2 else None for j in range(s + 1)]
        b[0] = b[1] = b[2]
        y0, f0 = ev.y, ev.dydt
        mu1 = b[1] * w1
        prev, cur = y0, y0 + (mu1 * dt) * f0
        c_prev, c_cur = 0.0, mu1
        for j in range(2, s + 1):
            mu, nu = 2 * b[j] * w0 / b[j - 1], -b[j] / b[j - 2]
            mu_t = 2 * b[j] * w1 / b[j - 1]
            gamma_t = -(1 - b[j - 1] * t[j - 1]) * mu_t
            f = problem.evaluate(ev.t + c_cur * dt, cur).dydt
            nxt = (1 - mu - nu) * y0 + mu * cur + nu * prev + (mu_t * dt) * f + (gamma_t * dt) * f0
            prev, cur = cur, nxt
            c_prev, c_cur = c_cur, mu * c_cur + nu * c_prev + mu_t + gamma_t
        return cur
