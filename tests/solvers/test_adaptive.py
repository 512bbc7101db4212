"""Adaptive: when a tentative step is evaluated, and what a rejection or a blow-up costs."""

import math
from dataclasses import dataclass

import torch

from solvers import (
    Adaptive,
    CountingProblem,
    Euler,
    ExponentialRosenbrock,
    FunctionProblem,
    LocalError,
    integrate,
)

from .test_integrate import Recorder


@dataclass(frozen=True)
class EvaluatingFirst:
    """The same controller, made to see the evaluated end of every tentative step."""

    controller: LocalError
    needs_end_evaluation = True

    def adapt(self, before, after, h, dt):
        return self.controller.adapt(before, after, h, dt)


def _logistic() -> FunctionProblem:
    # y' = y (1 - y) - 0.1 y^3: nonlinear, so the exponential step has a remainder to estimate.
    return FunctionProblem(lambda t, y: y * (1 - y) - 0.1 * y**3)


def _run(controller_of, problem=None):
    stepper = ExponentialRosenbrock(krylov_tol=1e-10)
    controller = LocalError(1e-8, 1e-11, estimate=stepper.error_estimate, order=3)
    rec = Recorder()
    y0 = torch.linspace(0.1, 2.0, 6, dtype=torch.float64)
    sol = integrate(problem or _logistic(), y0, (0.0, 20.0), Adaptive(stepper, controller_of(controller), dt0=5.0),
                    observers=[rec])
    return sol, rec.steps


def test_an_embedded_estimate_decides_first_so_a_rejected_step_costs_no_evaluation():
    assert not LocalError(estimate=ExponentialRosenbrock().error_estimate).needs_end_evaluation
    assert LocalError().needs_end_evaluation  # the Hermite estimate reads the end's slope
    first, first_steps = _run(lambda c: c)
    evaluating, evaluating_steps = _run(EvaluatingFirst)
    rejected = sum(r.rejected for r in first_steps)
    assert rejected >= 3  # dt0 = 5 is far too long at first
    # The same accepted steps bit for bit, each rejection one evaluation cheaper.
    assert [(r.ev.t, r.dt, r.rejected) for r in first_steps] == [(r.ev.t, r.dt, r.rejected) for r in evaluating_steps]
    assert all(torch.equal(a.ev.y, b.ev.y) for a, b in zip(first_steps, evaluating_steps))
    assert evaluating.counters.evals - first.counters.evals == rejected


class Overflowing(Euler):
    """Euler whose step overflows to NaN when longer than ``limit``."""

    def __init__(self, limit: float):
        self.limit = limit

    def step(self, ev, dt, problem=None):
        y = super().step(ev, dt, problem)
        return torch.full_like(y, math.nan) if dt > self.limit else y


def _euler_error(before, after, h):
    # Euler's local error ~ (h^2 / 2) y'' = (h / 2)(F(y') - F(y)); with y' = -y it is
    # (h / 2)(y - y'), read from the states alone.
    return (before.y - after.y) * (h / 2)


_euler_error.embedded = True


def test_a_step_deciding_first_on_a_non_finite_estimate_is_retried_tenfold_shorter_without_evaluation():
    problem = CountingProblem(FunctionProblem(lambda t, y: -y))
    rec = Recorder()
    method = Adaptive(Overflowing(limit=0.05), LocalError(1e-2, 1e-5, estimate=_euler_error), dt0=1.0)
    sol = integrate(problem, torch.ones(3, dtype=torch.float64), (0.0, 1.0), method, observers=[rec])
    assert sol.stop.status == "finished"
    assert rec.steps[0].rejected == 2 and rec.steps[0].dt == 1.0 / 100  # 1 -> 0.1 -> 0.01
    assert sol.counters.evals == 1 + len(rec.steps)  # the two NaN steps were never evaluated


def test_a_step_whose_estimate_stays_non_finite_fails_after_max_blowups_with_no_evaluation():
    problem = CountingProblem(FunctionProblem(lambda t, y: -y))
    method = Adaptive(Overflowing(limit=0.0), LocalError(1e-2, 1e-5, estimate=_euler_error), dt0=1.0, max_blowups=3)
    sol = integrate(problem, torch.ones(3, dtype=torch.float64), (0.0, 1.0), method)
    assert sol.stop.status == "failed"
    assert "non-finite error estimate at t = 0.001" in sol.stop.reason and "after 3 tenfold shorter tries" in sol.stop.reason
    assert sol.counters.evals == 1
