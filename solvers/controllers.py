"""Step-size controllers: accept or reject a tentative step and choose the next dt.

A controller is a small object with one method, ``adapt(before, after, h, dt)``, given the
evaluations at the start and at the end of a tentative step of size ``h`` (the step
actually taken, which may be shorter than the controller's own ``dt`` when a save time
was hit). It returns a :class:`Decision`. Controllers hold no state: the integration loop
carries ``dt``. A controller whose decision reads nothing of the step's end but its state
says so with ``needs_end_evaluation = False``: :class:`~solvers.adaptive.Adaptive` then
passes a :class:`~solvers.problem.State` and evaluates only a step it accepts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .problem import Evaluation, State


@dataclass(frozen=True)
class Decision:
    """accept: keep the step; dt_next: the controller's next step size; ratios: each
    measured change divided by its bound (a ratio above 1 means the bound was exceeded)."""

    accept: bool
    dt_next: float
    ratios: dict[str, float] = field(default_factory=dict)


class Controller(Protocol):
    def adapt(self, before: Evaluation, after: Evaluation, h: float, dt: float) -> Decision: ...


# Below this, a squared norm has lost precision to underflow (the square of the smallest normal's square root).
_NORMAL_SQUARES = {t: torch.finfo(t).tiny * 2**40 for t in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}


def gradient_turn(g: torch.Tensor, g_new: torch.Tensor, gg: float | None = None, gg_new: float | None = None) -> float:
    """r = ||g' - g||^2 / (||g'|| ||g||): how much the gradient turned over a step.

    Zero when both gradients vanish (at rest, nothing turned); infinite when exactly one does:
    a step that annihilated the gradient, or started from a stationary point and left it,
    turned it completely and must not be accepted as a small change (the original code
    returned 0 there, which accepts a first Euler step of dt = 1 on y' = -y landing on y = 0).
    ``gg``, ``gg_new``: ||g||^2 and ||g'||^2 when already known (see
    :meth:`Evaluation.sq_norm`), so that each gradient's norm is computed once per run.
    In float64, ||g' - g||^2 is expanded as ||g||^2 + ||g'||^2 - 2 g.g': one pass over
    two vectors instead of a subtraction and a pass over its result (the controller's main
    cost, ~1% of a run). The expansion is exact to ~eps ||g|| ||g'||, so r has an absolute
    error of ~1e-15, far below any bound a controller sets (max_dgrad 1e-4 in the paper).
    In float32 that error would be ~1e-6, a percent of such a bound, so the difference is
    formed explicitly there. Gradients so small that their squares leave the normal range
    (entries below ~1e-154 in float64) are rescaled first: r does not depend on their scale.
    """
    gg = float(g.dot(g)) if gg is None else gg
    gg_new = float(g_new.dot(g_new)) if gg_new is None else gg_new
    if min(gg, gg_new) < _NORMAL_SQUARES[g.dtype]:
        scale = max((float(v.abs().max()) for v in (g, g_new) if v.numel()), default=0.0)
        if scale == 0.0:
            return 0.0  # both vanish: at rest
        g, g_new = g / scale, g_new / scale
        gg, gg_new = float(g.dot(g)), float(g_new.dot(g_new))
    product = gg * gg_new  # the original code's sqrt(gg gg'), kept bit for bit where it does not underflow
    norms = math.sqrt(product) if product > 1e-300 else math.sqrt(gg) * math.sqrt(gg_new)
    if norms == 0.0:
        return math.inf  # exactly one vanishes
    if torch.finfo(g.dtype).eps > 1e-12:
        d = g_new - g
        return float(d.dot(d)) / norms
    return max(gg + gg_new - 2.0 * float(g.dot(g_new)), 0.0) / norms


def largest_change(f: torch.Tensor, f_new: torch.Tensor) -> float:
    """max_i |f'_i - f_i|: the largest change of any output over a step."""
    if f.numel() == 0:
        return 0.0
    return float((f_new - f).abs().max())


def _measure(
    before: Evaluation, after: Evaluation, max_dgrad: float, max_dout: float, grad_key: str, out_key: str
) -> dict[str, float]:
    """The two ratios of seed 001's controller, each over its bound; NaN counts as exceeded."""
    turn = gradient_turn(before.value(grad_key), after.value(grad_key),
                         before.sq_norm(grad_key), after.sq_norm(grad_key))
    ratios = {"dgrad": turn / max_dgrad}
    if math.isfinite(max_dout):
        ratios["dout"] = largest_change(before.value(out_key), after.value(out_key)) / max_dout
    return {k: (math.inf if math.isnan(v) else v) for k, v in ratios.items()}


def _check_bounds(max_dgrad: float, max_dout: float) -> None:
    if not max_dgrad > 0:
        raise ValueError(f"max_dgrad = {max_dgrad!r}: the gradient-turn bound must be > 0")
    if not max_dout > 0:
        raise ValueError(f"max_dout = {max_dout!r}: the output-change bound must be > 0 (inf disables it)")


@dataclass(frozen=True)
class GradientRatio:
    """The controller of Geiger, Spigler, Jacot, Wyart (seed 001, arXiv 1906.08034).

    With g, g' the gradients before and after a tentative step and f, f' the outputs,

        r_grad = ||g' - g||^2 / (||g'|| ||g||) / max_dgrad,
        r_out  = max_i |f'_i - f_i| / max_dout.

    Reject and divide dt by ``shrink`` (10) when any ratio is >= 1; accept otherwise, and
    multiply dt by ``grow`` (1.1) when every ratio is below 1/2. This is exactly the rule
    of the original public implementation (mariogeiger/gradientflow, ``flow``), kept
    unchanged to reproduce the paper. For a network, ``max_dout`` is the paper's
    max_dout / alpha, so the bound acts on the centred output alpha (f - f0).
    ``grad_key``, ``out_key``: the evaluation's values holding g and f
    (:meth:`~solvers.problem.Evaluation.value`); r_grad is blind to the sign of g, so a
    gradient flow names ``"dydt"`` (g = -dy/dt), with no copy of the gradient held.
    """

    max_dgrad: float = 1e-4
    max_dout: float = math.inf
    grow: float = 1.1
    shrink: float = 10.0
    grad_key: str = "grad"
    out_key: str = "f"

    def __post_init__(self) -> None:
        _check_bounds(self.max_dgrad, self.max_dout)

    def adapt(self, before: Evaluation, after: Evaluation, h: float, dt: float) -> Decision:
        ratios = _measure(before, after, self.max_dgrad, self.max_dout, self.grad_key, self.out_key)
        if all(r < 1.0 for r in ratios.values()):
            grow = all(r < 0.5 for r in ratios.values())
            return Decision(True, dt * self.grow if grow else dt, ratios)
        return Decision(False, dt / self.shrink, ratios)


@dataclass(frozen=True)
class RatioTarget:
    """A smoother controller for the same bounds: choose dt from the measured ratios.

    For a first-order step the gradient changes by g' - g ~ h H g, so r_grad grows like
    h^2, while the output change r_out grows like h. The step that would put each ratio at
    ``target`` (a fraction of its bound) is h (target / r_grad)^{1/2} and
    h (target / r_out); the next dt is the smaller of the two, kept within
    [h / max_factor, h * max_factor]. A step whose ratio exceeds 1 is rejected and retried
    with that dt (cut by at most 10, like the paper's rule). This is the standard asymptotic step-size rule (Hairer, Norsett, Wanner,
    *Solving ODEs I*, II.4) applied to the paper's error indicators instead of an embedded
    error estimate; it avoids the paper rule's cycles of slow 1.1x growth and 10x cuts.
    ``grad_key``, ``out_key``: as for :class:`GradientRatio`.
    """

    max_dgrad: float = 1e-4
    max_dout: float = math.inf
    target: float = 0.5
    max_factor: float = 5.0
    grad_key: str = "grad"
    out_key: str = "f"

    def __post_init__(self) -> None:
        _check_bounds(self.max_dgrad, self.max_dout)
        if not 0.0 < self.target < 1.0:
            raise ValueError(f"target = {self.target!r}: must lie strictly between 0 and 1")
        if not self.max_factor > 1.0:
            raise ValueError(f"max_factor = {self.max_factor!r}: must be > 1")

    def adapt(self, before: Evaluation, after: Evaluation, h: float, dt: float) -> Decision:
        ratios = _measure(before, after, self.max_dgrad, self.max_dout, self.grad_key, self.out_key)
        exponents = {"dgrad": 0.5, "dout": 1.0}
        ideal = min((h * (self.target / r) ** exponents[k] for k, r in ratios.items() if r > 0), default=math.inf)
        accept = all(r < 1.0 for r in ratios.values())
        # A step shortened to hit a save time may grow from the controller's dt, not from h.
        longest = max(h, dt) * self.max_factor if accept else h
        return Decision(accept, min(max(ideal, h / self.max_factor if accept else h / 10), longest), ratios)


@dataclass(frozen=True)
class FixedStep:
    """Accept every step and keep dt: a fixed-grid integration with step ``dt``."""

    dt: float

    def __post_init__(self) -> None:
        if not self.dt > 0:
            raise ValueError(f"dt = {self.dt!r}: a fixed step must be > 0")

    def adapt(self, before: Evaluation, after: Evaluation, h: float, dt: float) -> Decision:
        return Decision(True, self.dt)


def hermite_error(before: Evaluation, after: Evaluation, h: float) -> torch.Tensor:
    """The local error of a second-order one-step method from its endpoint values and slopes,

        est = (12 (y - y') + 6 h (F + F')) / 15

    (Sommeijer, Shampine, Verwer 1998, the RKC code's estimator), at no extra evaluation."""
    return (12 * (before.y - after.y) + 6 * h * (before.dydt + after.dydt)) / 15


@dataclass(frozen=True)
class LocalError:
    """Error-per-step control from a local error estimate of a second-order solution.

    ``estimate(before, after, h)`` gives the error vector: by default
    :func:`hermite_error`, for any second-order step, which reads the slope at the step's
    end; an embedded pair passes its own (``ExponentialRosenbrock.error_estimate``),
    marked ``embedded = True``: it reads nothing of the end, so the decision needs only
    y_{n+1} and a rejected step costs no evaluation (``needs_end_evaluation`` is False).
    The error is measured in one of two scales:

    * component-wise (no ``origin``; Hairer, Norsett, Wanner, II.4):
      err = RMS_i( est_i / (atol + rtol max(|y_i|, |y'_i|)) );
    * displacement (``origin`` y0 given): err = RMS(est) / (atol + rtol D), with
      D = max(RMS(y - y0), RMS(y' - y0)) the distance travelled from the origin. The error
      is then relative to how far the state has moved, not to its size: in the lazy regime
      of a network (large alpha) the weights move by ~1/alpha of their size, and an error
      relative to |w| would control that motion ever more loosely as alpha grows, while
      the learned function alpha (f - f0) is linear in the motion w - w0.

    The step is accepted when err <= 1; the next dt is h * safety err^{-1/(order + 1)} (the
    estimate measures the local error of a solution of ``order``, ~ h^(order + 1): 2 for
    :func:`hermite_error`, 3 for the exponential schemes' embedded solutions), kept within
    [h / 10, h * max_factor] and not grown after a rejection.
    """

    rtol: float = 1e-4
    atol: float = 1e-7
    max_factor: float = 5.0
    estimate: Callable[[Evaluation, Evaluation, float], torch.Tensor] = hermite_error
    origin: torch.Tensor | None = None
    order: int = 2
    safety: float = 0.8

    def __post_init__(self) -> None:
        if not self.rtol > 0 or not self.atol >= 0:
            raise ValueError(f"rtol = {self.rtol!r}, atol = {self.atol!r}: need rtol > 0 and atol >= 0")

    @property
    def needs_end_evaluation(self) -> bool:
        return not getattr(self.estimate, "embedded", False)

    def error(self, est: torch.Tensor, before: Evaluation, after: State) -> float:
        """The normalised error of an estimate ``est`` over a step (see the class docstring)."""
        if self.origin is None:
            scale = self.atol + self.rtol * torch.maximum(before.y.abs(), after.y.abs())
            return float((est / scale).pow(2).mean().sqrt())
        # squared in place: one temporary of the state's size, not two
        moved = max(float(torch.sub(y, self.origin).square_().mean().sqrt()) for y in (before.y, after.y))
        return float(est.pow(2).mean().sqrt()) / (self.atol + self.rtol * moved)

    def adapt(self, before: Evaluation, after: State, h: float, dt: float) -> Decision:
        err = self.error(self.estimate(before, after, h), before, after)
        if math.isnan(err):
            err = math.inf
        factor = self.safety * err ** (-1 / (self.order + 1)) if err > 0 else self.max_factor
        if err <= 1.0:
            # A step shortened to hit a save time may grow from the controller's dt, not from h.
            return Decision(True, min(max(h * factor, h / 10), max(h, dt) * self.max_factor), {"error": err})
        return Decision(False, h * max(min(factor, 1.0), 0.1), {"error": err})
