"""Stop events: conditions checked after every accepted step.

An event is a callable ``event(ev, progress) -> Stop | None``. The integration stops at
the first event that fires, with the event's status and reason. Reaching t_end, a
non-finite evaluation and a collapsing step size are handled by the entry point itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from .problem import Evaluation

Status = Literal["finished", "stopped", "failed"]


@dataclass(frozen=True)
class Stop:
    """Why an integration ended. ``finished``: it reached its goal (t_end or a condition);
    ``stopped``: a budget ran out or it was interrupted; ``failed``: the numbers broke."""

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
