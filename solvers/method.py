"""The contract between the entry point and a method (native or torchdiffeq).

A method advances from an evaluation to ``t_stop`` (a save time or t_end), reporting each
accepted step through ``on_step(ev, dt, rejected, ratios)``, which returns a
:class:`~solvers.events.Stop` when the integration must end there. It returns the
evaluation where it ended, the step size to start the next segment with (so no segment
restarts its step-size search), and the stop, if any.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from .events import Stop
from .problem import CountingProblem, Evaluation

OnStep = Callable[[Evaluation, float, int, dict[str, float]], "Stop | None"]


class Segment(NamedTuple):
    ev: Evaluation
    dt: float | None
    stop: Stop | None


class Method(Protocol):
    def advance(
        self, problem: CountingProblem, ev: Evaluation, t_stop: float, dt: float | None, on_step: OnStep
    ) -> Segment: ...
