import math

import pytest
import torch

from solvers import MaxSteps, TorchDiffEq, integrate
from solvers.torchdiffeq_backend import ADAPTIVE, FIXED, METHODS

from .problems import Recorder, decay, oscillator, oscillator_solution


class Counted:
    """Counts every call of the vector field, independently of the integrator's counter."""

    def __init__(self, problem):
        self.problem, self.calls = problem, 0

    def evaluate(self, t, y):
        self.calls += 1
        return self.problem.evaluate(t, y)


def _decay_error(method):
    sol = integrate(decay(2.0), torch.ones(3), (0.0, 2.0), method, save_at=[0.0, 0.5, 2.0])
    assert sol.stop.status == "finished"
    return float((sol.y - math.exp(-4.0)).abs().max())


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_methods_converge_as_tolerance_tightens(name):
    errors = [_decay_error(TorchDiffEq(name, rtol=r, atol=r * 1e-3)) for r in (1e-3, 1e-5, 1e-7)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-6, errors


@pytest.mark.parametrize("name,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_grid_methods_converge_at_their_order(name, order):
    errors = [_decay_error(TorchDiffEq(name, step_size=h)) for h in (0.04, 0.02)]
    assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.35)


@pytest.mark.parametrize("name", ["dopri5", "bosh3", "rk4"])
def test_momentum_oscillator_matches_closed_form(name):
    sol = integrate(oscillator(4.0, 1.0), torch.tensor([1.0, 0.0]), (0.0, 3.0),
                    TorchDiffEq(name, rtol=1e-9, atol=1e-12, step_size=1e-3))
    assert float(sol.y[0]) == pytest.approx(oscillator_solution(4.0, 1.0, 3.0), abs=1e-7)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_streams_steps_hits_save_times_and_counts_every_call(name):
    problem, rec = Counted(decay(1.0)), Recorder()
    times = [0.0, 0.1, 0.35, 1.0]
    sol = integrate(problem, torch.ones(2), (0.0, 1.0), TorchDiffEq(name, step_size=0.01), save_at=times,
                    observers=[rec])
    assert [s.ev.t for s in rec.saves] == times
    assert sol.counters.evals == problem.calls
    assert rec.steps and rec.steps[-1].ev.t == 1.0
    assert all(b.ev.t > a.ev.t for a, b in zip(rec.steps, rec.steps[1:]))
    assert sum(r.dt for r in rec.steps) == pytest.approx(1.0)
    for r in rec.steps:  # each record's evaluation is at the accepted state
        assert torch.allclose(r.ev.dydt, -r.ev.y)


def test_fsal_method_costs_no_extra_evaluation_for_the_step_records():
    problem, rec = Counted(decay(1.0)), Recorder()
    integrate(problem, torch.ones(2), (0.0, 5.0), TorchDiffEq("bosh3", rtol=1e-8, atol=1e-10), observers=[rec])
    attempts = len(rec.steps) + sum(r.rejected for r in rec.steps)
    # bosh3: 3 new evaluations per attempt (FSAL), plus the start and the initial-step probe
    assert problem.calls <= 3 * attempts + 3


def test_step_size_is_carried_across_save_intervals():
    def evals(n_saves):
        times = [5.0 * k / n_saves for k in range(n_saves + 1)]
        return integrate(decay(1.0), torch.ones(2), (0.0, 5.0), TorchDiffEq("dopri5", rtol=1e-8, atol=1e-10),
                         save_at=times).counters.evals

    assert evals(50) < 1.5 * evals(1)


def test_events_stop_inside_a_torchdiffeq_interval():
    sol = integrate(decay(1.0), torch.ones(1), (0.0, 100.0), TorchDiffEq("rk4", step_size=0.1), events=[MaxSteps(7)])
    assert sol.stop.status == "stopped" and sol.counters.steps == 7 and sol.t == pytest.approx(0.7)


def test_bad_method_arguments_are_rejected():
    with pytest.raises(ValueError, match="must be one of"):
        TorchDiffEq("explicit_adams")
    for name in FIXED:
        with pytest.raises(ValueError, match="fixed-step"):
            TorchDiffEq(name)


def test_implicit_adams_fails_when_its_iteration_does_not_converge_instead_of_finishing():
    """Too large a step on a stiff decay: torchdiffeq only warns; the run must not say finished."""
    sol = integrate(decay(50.0), torch.ones(3), (0.0, 2.0), TorchDiffEq("implicit_adams", step_size=0.5))
    assert sol.stop.status == "failed" and "did not converge" in sol.stop.reason and "--dt" in sol.stop.reason
    good = integrate(decay(50.0), torch.ones(3), (0.0, 2.0), TorchDiffEq("implicit_adams", step_size=0.001))
    assert good.stop.status == "finished"


def test_scipy_methods_are_not_offered():
    assert not [m for m in METHODS if "scipy" in m.lower()]
    with pytest.raises(ValueError, match="must be one of"):
        TorchDiffEq("scipy-BDF")
