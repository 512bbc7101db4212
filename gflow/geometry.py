"""Geometry of the network manifold along a trajectory (seeds 001, 002).

With J = df/dw at w and u a direction of motion in parameter space (u = dw/dt):

    velocity in function space       v = J u = d/ds f(w + s u) |_{s=0}
    acceleration                     a = u^T (d^2 f) u = d^2/ds^2 f(w + s u) |_{s=0}
    radius of curvature              R = ||v||^2 / ||a||
    exit time from the tangent space t1 ~ R / ||v||          (seed 001: "t1 ~ R / v")

The velocity is a forward-mode product (``torch.func.jvp``; reverse over reverse where the
network has a fused kernel without a forward rule), the acceleration three backward passes
(:meth:`gflow.autodiff.JVP.second`: exact where jvp of jvp is not, e.g. through LayerNorm),
so no Jacobian or Hessian is ever formed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .autodiff import JVP
from .errors import GflowError

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Curvature:
    """speed = ||J u||, acceleration = ||u^T d2f u||, radius R, exit_time = R / speed."""

    speed: float
    acceleration: float

    @property
    def radius(self) -> float:
        return self.speed**2 / self.acceleration if self.acceleration > 0 else math.inf

    @property
    def exit_time(self) -> float:
        return self.radius / self.speed if self.speed > 0 else math.inf


def directional_derivatives(model: Model, w: torch.Tensor, u: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(d/ds f(w + s u, x), d^2/ds^2 f(w + s u, x)) at s = 0, for every input in x."""
    return _jvp(model).second(lambda q: model(q, x), w.detach(), u.detach())


def _jvp(model: Model) -> JVP:
    """The model's own products (its choice of mode kept across calls), or fresh ones."""
    return getattr(model, "jvp", None) or JVP()


def curvature(model: Model, w: torch.Tensor, u: torch.Tensor, x: torch.Tensor) -> Curvature:
    """Curvature of the path s -> f(w + s u, x) in function space (outputs on x)."""
    v, a = directional_derivatives(model, w, u, x)
    return Curvature(float(v.norm()), float(a.norm()))


def linearization_gap(model: Model, w0: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> float:
    """||f(w) - f_lin(w)|| / ||f(w) - f(w0)|| with f_lin(w) = f(w0) + J0 (w - w0): how far the
    network has left its tangent space at w0 (0 for a linear model; 0/0 = 0 at w = w0)."""
    with torch.no_grad():
        df = _jvp(model)(lambda q: model(q, x), w0.detach(), w.detach() - w0.detach())[1]
        # f and f0 by the same evaluation (a reverse-mode product may take another kernel path):
        # at w = w0 the gap is exactly 0/0
        f0, f = model(w0.detach(), x), model(w.detach(), x)
    moved = float((f - f0).norm())
    return float((f - f0 - df).norm()) / moved if moved > 0 else 0.0


def check_threshold(eps: float) -> float:
    """A crossing threshold must be a finite number > 0 (a gap or change of 0 is crossed at
    once, a negative or NaN one never means anything)."""
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise GflowError(f"eps = {eps!r}: the t1 threshold must be a finite number > 0")
    return float(eps)


def first_crossing(times: np.ndarray, values: np.ndarray, eps: float) -> float:
    """The first time ``values`` exceeds ``eps``, interpolated linearly in log t between the
    two saves that bracket the crossing; inf when it never does (the run ended first)."""
    above = np.flatnonzero(np.asarray(values) > eps)
    if len(above) == 0:
        return math.inf
    k = int(above[0])
    if k == 0 or times[k - 1] <= 0:
        return float(times[k])
    t0, t1, v0, v1 = times[k - 1], times[k], values[k - 1], values[k]
    frac = (eps - v0) / (v1 - v0)
    return float(np.exp(np.log(t0) + frac * (np.log(t1) - np.log(t0))))
