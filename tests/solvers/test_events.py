"""Located events: a Crossing ends the integration where g(t, y) crosses zero inside a step."""

import math

import pytest
import torch

from solvers import (
    EXPRB43,
    Adaptive,
    ExponentialRosenbrock,
    FunctionProblem,
    LocalError,
    Observer,
    TorchDiffEq,
    integrate,
)
from solvers.events import Crossing


class _Saves(Observer):
    def __init__(self) -> None:
        self.saves: list[tuple[float, float]] = []
        self.steps: list[float] = []

    def on_save(self, record) -> None:
        self.saves.append((record.t, float(record.y[0])))

    def on_step(self, record) -> None:
        self.steps.append(record.ev.t)


def _decay() -> FunctionProblem:
    return FunctionProblem(lambda t, y: -y)


def _methods():
    stepper = ExponentialRosenbrock(krylov_tol=1e-10, scheme=EXPRB43)
    return [TorchDiffEq("dopri5", rtol=1e-10, atol=1e-12, interpolates=True),
            Adaptive(stepper, LocalError(1e-9, 1e-12, estimate=stepper.error_estimate, order=3), dt0=0.05,
                     interpolates=True)]


@pytest.mark.parametrize("method", _methods(), ids=["dopri5", "exponential"])
def test_a_crossing_is_located_inside_the_step_to_the_method_accuracy(method):
    seen = _Saves()
    y0 = torch.tensor([1.0], dtype=torch.float64)
    solution = integrate(_decay(), y0, (0.0, 5.0), method, save_at=[0.0, 0.5, 0.69, 0.7, 2.0], observers=[seen],
                         events=[Crossing(lambda t, y: 0.5 - float(y[0]), "half", direction=+1)])
    assert solution.stop.status == "event" and solution.stop.reason.startswith("half at t = 0.69314")
    assert solution.t == pytest.approx(math.log(2), abs=1e-8)
    assert float(solution.y[0]) == pytest.approx(0.5, abs=1e-8)
    # Saves up to the crossing are served, none after it; no step past it is reported.
    assert [t for t, _ in seen.saves] == [0.0, 0.5, 0.69]
    assert all(t < math.log(2) for t in seen.steps)


def test_the_direction_selects_which_crossings_stop():
    y0 = torch.tensor([1.0], dtype=torch.float64)
    method = _methods()[0]
    downward = Crossing(lambda t, y: float(y[0]) - 0.5, "below half", direction=+1)  # never rises
    assert integrate(_decay(), y0, (0.0, 2.0), method, events=[downward]).stop.status == "finished"
    falling = Crossing(lambda t, y: float(y[0]) - 0.5, "below half", direction=-1)
    assert integrate(_decay(), y0, (0.0, 2.0), method, events=[falling]).t == pytest.approx(math.log(2), abs=1e-8)


def test_the_earliest_of_two_crossings_in_one_step_wins():
    y0 = torch.tensor([1.0], dtype=torch.float64)
    events = [Crossing(lambda t, y: 0.3 - float(y[0]), "late"), Crossing(lambda t, y: 0.6 - float(y[0]), "early")]
    solution = integrate(_decay(), y0, (0.0, 3.0), TorchDiffEq("euler", step_size=2.0), events=events)
    assert solution.stop.reason.startswith("early") and solution.t < 2.0


def test_integrating_on_from_a_crossing_continues_the_counts_and_the_solution():
    y0 = torch.tensor([1.0], dtype=torch.float64)
    first = integrate(_decay(), y0, (0.0, 3.0), _methods()[0],
                      events=[Crossing(lambda t, y: 0.5 - float(y[0]), "half", +1)])
    rest = integrate(_decay(), first.y, (first.t, 3.0), _methods()[0], counters=first.counters)
    assert rest.stop.status == "finished" and float(rest.y[0]) == pytest.approx(math.exp(-3.0), rel=1e-8)
    assert rest.counters.evals > first.counters.evals and rest.counters.steps > first.counters.steps
