"""The contract between the entry point and a method (native, torchdiffeq, SUNDIALS, torchode).

A method advances from an evaluation to ``t_stop`` (a save time or t_end), reporting each
accepted step through ``on_step(ev, dt, rejected, ratios, interpolant)``, which returns a
:class:`~solvers.events.Stop` when the integration must end there. ``interpolant`` is the
step's dense output (:mod:`solvers.dense`), or None from a method that lands on save times
instead. It returns the evaluation where it ended, the step size to start the next segment
with (so no segment restarts its step-size search), and the stop, if any.

A method whose ``interpolates`` attribute is true is driven straight to t_end: the entry
point serves the save times inside each step from its interpolant, so saves never shorten
its steps. Otherwise each save time is a ``t_stop`` the method lands on exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from .dense import Interpolant
from .events import Stop
from .problem import CountingProblem, Evaluation

OnStep = Callable[[Evaluation, float, int, dict[str, float], "Interpolant | None"], "Stop | None"]


class Segment(NamedTuple):
    ev: Evaluation
    dt: float | None
    stop: Stop | None


class Method(Protocol):
    interpolates: bool

    def advance(
        self, problem: CountingProblem, ev: Evaluation, t_stop: float, dt: float | None, on_step: OnStep
    ) -> Segment: ...
