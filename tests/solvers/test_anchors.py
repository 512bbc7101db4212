"""The anchor methods (SUNDIALS CVODE, torchode's Tsit5) against closed forms: convergence as
the tolerance tightens, saves from their dense output, and honest evaluation counts."""

import math

import pytest
import torch

from solvers import FunctionProblem, Observer, Sundials, TorchODE, integrate

from .problems import decay, oscillator, oscillator_solution

sksundae = pytest.importorskip("sksundae", reason="scikit-sundae not installed (pip install -e '.[stiff]')")
torchode = pytest.importorskip("torchode", reason="torchode not installed (pip install -e '.[stiff]')")

ANCHORS = [lambda r: Sundials(rtol=r, atol=r * 1e-3), lambda r: TorchODE("tsit5", rtol=r, atol=r * 1e-3),
           lambda r: TorchODE("dopri5", rtol=r, atol=r * 1e-3)]


class Saves(Observer):
    def __init__(self):
        self.saves = []

    def on_save(self, record):
        self.saves.append(record)


def _stiff_linear():
    """dy/dt = -A y with eigenvalues 1 ... 1e4: the stiff spectrum of a trained network in
    miniature; y(t) = e^{-A t} y0 in closed form."""
    rates = torch.logspace(0, 4, 8, dtype=torch.float64)
    return FunctionProblem(lambda t, y: -rates * y, lambda t, y: {}), rates


@pytest.mark.parametrize("make", ANCHORS, ids=["cvode", "tsit5", "dopri5"])
def test_anchor_converges_to_closed_form_as_tolerance_tightens(make):
    errors = []
    for rtol in (1e-4, 1e-6, 1e-8):
        sol = integrate(decay(2.0), torch.ones(3, dtype=torch.float64), (0.0, 2.0), make(rtol))
        assert sol.stop.status == "finished"
        errors.append(float((sol.y - math.exp(-4.0)).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-8, errors


@pytest.mark.parametrize("make", ANCHORS, ids=["cvode", "tsit5", "dopri5"])
def test_anchor_serves_save_times_inside_steps_to_its_accuracy(make):
    times = [0.0, 0.013, 0.4, 0.77, 1.5, 3.0]
    observer = Saves()
    sol = integrate(oscillator(4.0, 1.0), torch.tensor([1.0, 0.0], dtype=torch.float64), (0.0, 3.0), make(1e-9),
                    save_at=times, observers=[observer])
    assert [r.t for r in observer.saves] == times
    for record in observer.saves:
        assert float(record.y[0]) == pytest.approx(oscillator_solution(4.0, 1.0, record.t), abs=1e-6)
    # Saves never cut steps: one save or six, the same steps.
    alone = integrate(oscillator(4.0, 1.0), torch.tensor([1.0, 0.0], dtype=torch.float64), (0.0, 3.0), make(1e-9))
    assert sol.counters.steps == alone.counters.steps


def test_cvode_is_stable_on_a_stiff_spectrum_where_explicit_methods_crawl():
    problem, rates = _stiff_linear()
    y0 = torch.ones(8, dtype=torch.float64)
    exact = torch.exp(-rates * 10.0)
    implicit = integrate(problem, y0, (0.0, 10.0), Sundials(rtol=1e-6, atol=1e-12))
    explicit = integrate(problem, y0, (0.0, 10.0), TorchODE("tsit5", rtol=1e-6, atol=1e-12))
    assert float((implicit.y - exact).abs().max()) < 1e-5
    assert float((explicit.y - exact).abs().max()) < 1e-5
    # Explicit stability bounds the step by ~3 / 1e4: thousands of evaluations; BDF is not bound.
    assert implicit.counters.evals * 5 < explicit.counters.evals


def test_cvode_counts_every_right_hand_side_and_jacobian_product():
    calls = 0
    problem, _ = _stiff_linear()

    def field(t, y):
        nonlocal calls
        calls += 1
        return problem.evaluate(t, y).dydt

    sol = integrate(FunctionProblem(field, lambda t, y: {}), torch.ones(8, dtype=torch.float64), (0.0, 10.0),
                    Sundials(rtol=1e-6, atol=1e-12))
    # Every call is either the method's (counted as its cost) or an observation of an
    # accepted state (counted apart): nothing is hidden.
    assert sol.counters.evals + sol.counters.observed == calls and sol.counters.evals > 0


@pytest.mark.parametrize("kwargs,match", [({"rtol": 0.0}, "rtol"), ({"max_order": 6}, "orders 1 to 5")])
def test_cvode_refuses_bad_settings_with_a_clear_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sundials(**kwargs)


def test_torchode_refuses_an_unknown_method_naming_the_choices():
    with pytest.raises(ValueError, match="tsit5, dopri5"):
        TorchODE("rk4")
