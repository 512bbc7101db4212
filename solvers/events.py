"""Stop events: conditions checked after every accepted step.

An event is a callable ``event(ev, progress) -> Stop | None``. The integration stops at
the first event that fires, with the event's status and reason. Reaching t_end, a
non-finite evaluation and a collapsing step size are handled by the entry point itself.

A :class:`Crossing` is located, not merely checked: the integration ends at the time inside
the step where a continuous function g(t, y) crosses zero (status ``event``), the way
SciPy's ``solve_ivp`` treats terminal events, so a caller can switch the vector field there
(a hybrid system) and start again from that state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from .dense import Interpolant
from .problem import Evaluation

Status = Literal["finished", "stopped", "failed", "event"]


@dataclass(frozen=True)
class Stop:
    """Why an integration ended. ``finished``: it reached its goal (t_end or a condition);
    ``stopped``: a budget ran out or it was interrupted; ``failed``: the numbers broke;
    ``event``: a :class:`Crossing` was located (the caller goes on from there)."""

    status: Status
    reason: str


@dataclass(frozen=True)
class Progress:
    """Where the integration stands after an accepted step."""

    t: float
    steps: int
    evals: int
    wall: float
    dt: float


class Event(Protocol):
    def __call__(self, ev: Evaluation, progress: Progress) -> Stop | None: ...


@dataclass(frozen=True)
class Condition:
    """Stop (as finished) when ``predicate(ev)`` holds, e.g. every training margin >= 1."""

    predicate: Callable[[Evaluation], bool]
    reason: str

    def __call__(self, ev: Evaluation, progress: Progress) -> Stop | None:
        return Stop("finished", self.reason) if self.predicate(ev) else None


@dataclass(frozen=True)
class WallClock:
    """Stop when the integration has run for ``seconds`` of wall time."""

    seconds: float

    def __call__(self, ev: Evaluation, progress: Progress) -> Stop | None:
        if progress.wall >= self.seconds:
            return Stop("stopped", f"wall-clock budget of {self.seconds:g} s reached")
        return None


@dataclass(frozen=True)
class MaxSteps:
    """Stop after ``steps`` accepted steps."""

    steps: int

    def __call__(self, ev: Evaluation, progress: Progress) -> Stop | None:
        if progress.steps >= self.steps:
            return Stop("stopped", f"maximum of {self.steps} steps reached")
        return None


@dataclass(frozen=True)
class Crossing:
    """A terminal event located inside a step: the integration ends at the t* where
    ``g(t, y)`` crosses zero, ``direction`` +1 from below (g < 0 before, g >= 0 after), -1
    from above, 0 either way. g is evaluated at every accepted state; when its sign changes
    across a step, t* is found by Brent's method on the step's dense output (no evaluation
    of the problem; each try one call of g) to ``xtol`` of the step's length, and the
    integration ends there with status ``event`` and reason ``name``. Saves after t* are not
    served: they belong to what the caller integrates next."""

    g: Callable[[float, torch.Tensor], float]
    name: str
    direction: int = 0
    xtol: float = 1e-10

    def crossed(self, before: float, after: float) -> bool:
        """Whether g went from ``before`` to ``after`` through zero in this event's direction."""
        upward = before < 0 <= after
        downward = before > 0 >= after
        return upward if self.direction > 0 else downward if self.direction < 0 else upward or downward

    def locate(self, step: Interpolant, t0: float, g0: float, t1: float, g1: float) -> float:
        """The crossing time in (t0, t1] on the step's dense output ``step``."""
        if g1 == 0:
            return t1
        from scipy.optimize import brentq  # here: importing scipy.optimize is 0.1-0.3 s of every run's start

        def g(t: float) -> float:
            return g0 if t == t0 else self.g(t, step(t)[0])

        return float(brentq(g, t0, t1, xtol=self.xtol * (t1 - t0), rtol=8.9e-16))


def non_finite(ev: Evaluation) -> Stop | None:
    """Fail on NaN or inf anywhere in an accepted evaluation (always checked)."""
    if ev.finite:
        return None
    bad = [k for k, v in {"dydt": ev.dydt, **ev.aux}.items() if not bool(v.isfinite().all())]
    return Stop("failed", f"non-finite values in {', '.join(bad)} at t = {ev.t:.6g}")


def step_collapsed(t: float, h: float, dt_min: float) -> Stop | None:
    """Fail when the step size falls below ``dt_min`` (relative to max(1, |t|))."""
    if h < dt_min * max(1.0, abs(t)) or not math.isfinite(h):
        return Stop("failed", f"step size collapsed to {h:.3g} at t = {t:.6g} (floor {dt_min:g})")
    return None
