"""Dense output: the state between the ends of a step, or between stored states.

An *interpolant* of a step from t0 to t1 is a callable ``interpolant(t) -> (y, dy/dt)`` for
t in [t0, t1]; methods hand one to the entry point with every accepted step, so that save
times inside a step are served without cutting the step (:func:`~solvers.integrate`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .problem import Evaluation

Interpolant = Callable[[float], tuple[torch.Tensor, torch.Tensor]]


def hermite(
    t: float, t0: float, y0: torch.Tensor, f0: torch.Tensor, t1: float, y1: torch.Tensor, f1: torch.Tensor
) -> torch.Tensor:
    """Cubic Hermite interpolation of y(t) on [t0, t1] from the end values and derivatives.

    With h = t1 - t0 and s = (t - t0) / h,

        y(t) ~ (1 + 2s)(1 - s)^2 y0 + s (1 - s)^2 h f0 + s^2 (3 - 2s) y1 + s^2 (s - 1) h f1,

    exact for cubics, with error at most h^4 max|y''''| / 384 (Hairer, Norsett, Wanner,
    *Solving ODEs I*, II.6): fourth order in the spacing of the stored states.
    """
    return hermite_pair(t, t0, y0, f0, t1, y1, f1)[0]


def hermite_pair(
    t: float, t0: float, y0: torch.Tensor, f0: torch.Tensor, t1: float, y1: torch.Tensor, f1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(y(t), dy/dt(t)) of the cubic Hermite interpolant (see :func:`hermite`); the derivative
    is that of the cubic, third order in h."""
    h = t1 - t0
    if h <= 0:
        raise ValueError(f"interval [{t0}, {t1}] is empty")
    s = (t - t0) / h
    y = ((1 + 2 * s) * (1 - s) ** 2) * y0 + (s * (1 - s) ** 2 * h) * f0 + (s * s * (3 - 2 * s)) * y1 + (
        s * s * (s - 1) * h
    ) * f1
    dy = (6 * s * (s - 1) / h) * (y0 - y1) + ((1 - s) * (1 - 3 * s)) * f0 + (s * (3 * s - 2)) * f1
    return y, dy


def hermite_step(before: Evaluation, after: Evaluation) -> Interpolant:
    """The cubic Hermite interpolant of a step from its two end evaluations: fourth-order
    dense output for any method, at no extra evaluation."""

    def at(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        return hermite_pair(t, before.t, before.y, before.dydt, after.t, after.y, after.dydt)

    return at
