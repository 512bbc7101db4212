import math

import pytest
import torch

from solvers import Adaptive, Euler, ExactMomentum, FixedStep, integrate

from .problems import decay, oscillator, oscillator_solution


def _final(problem, y0, t_end, stepper, dt):
    return integrate(problem, y0, (0.0, t_end), Adaptive(stepper, FixedStep(dt), dt0=dt)).y


def test_euler_matches_exponential_decay_with_first_order_convergence():
    errors = []
    for dt in (1e-2, 5e-3, 2.5e-3):
        y = _final(decay(2.0), torch.ones(4), 1.0, Euler(), dt)
        errors.append(float((y - math.exp(-2.0)).abs().max()))
    assert errors[0] < 1e-2
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(p - 1.0) < 0.05 for p in orders), orders


def test_euler_step_is_exactly_y_plus_dt_times_derivative():
    problem = decay(3.0)
    ev = problem.evaluate(0.0, torch.tensor([1.0, -2.0]))
    assert torch.equal(Euler().step(ev, 0.1), torch.tensor([1.0, -2.0]) + 0.1 * torch.tensor([-3.0, 6.0]))


@pytest.mark.parametrize("tau,k", [(1.0, 4.0), (0.5, 2.0)])
def test_exact_momentum_matches_damped_oscillator_with_first_order_convergence(tau, k):
    errors = []
    for dt in (4e-3, 2e-3, 1e-3):
        y = _final(oscillator(k, tau), torch.tensor([1.0, 0.0]), 3.0, ExactMomentum(tau), dt)
        errors.append(abs(float(y[0]) - oscillator_solution(k, tau, 3.0)))
    assert errors[-1] < 5e-3
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(p - 1.0) < 0.1 for p in orders), orders


def test_exact_momentum_is_exact_for_a_constant_force():
    # g constant: v(t) = -g + (v0 + g) e^{-t/tau} exactly, whatever dt.
    tau, g = 0.7, 2.0
    ev_problem = oscillator(0.0)
    ev = ev_problem.evaluate(0.0, torch.tensor([0.0, 1.0]))
    ev.aux["grad"] = torch.tensor([g])
    y = ExactMomentum(tau).step(ev, 5.0)
    assert float(y[1]) == pytest.approx(-g + (1.0 + g) * math.exp(-5.0 / tau), rel=1e-14)


def test_exact_momentum_rejects_non_positive_tau():
    with pytest.raises(ValueError, match="tau"):
        ExactMomentum(0.0)
