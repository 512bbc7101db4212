"""The Runge-Kutta-Chebyshev stepper and the local-error controller."""

import math

import pytest
import torch

from solvers import (
    Adaptive,
    Chebyshev,
    CountingProblem,
    FixedStep,
    FunctionProblem,
    LocalError,
    integrate,
)
from solvers.chebyshev import DAMPING, stability_bound


def _linear(matrix: torch.Tensor) -> FunctionProblem:
    """dy/dt = -A y: gradient flow of y^T A y / 2."""
    return FunctionProblem(lambda t, y: -(matrix @ y), lambda t, y: {"grad": matrix @ y})


def _stiff_decay() -> tuple[FunctionProblem, torch.Tensor]:
    rates = torch.logspace(-3, 3, 40, dtype=torch.float64)
    return FunctionProblem(lambda t, y: -rates * y, lambda t, y: {"grad": rates * y}), rates


@pytest.mark.parametrize("s", [2, 5, 20, 80])
def test_stability_bound_matches_the_asymptotic_two_thirds_s_squared(s):
    # Verwer, Hundsdorfer, Sommeijer (1990): beta(s) ~ (2/3)(s^2 - 1)(1 - 2 eps / 15).
    asymptotic = 2 / 3 * (s**2 - 1) * (1 - 2 * DAMPING / 15)
    assert stability_bound(s) == pytest.approx(asymptotic, rel=0.02 if s > 2 else 0.1)


@pytest.mark.parametrize("s", [2, 3, 10, 40])
def test_one_step_on_the_scalar_test_equation_is_bounded_inside_the_interval_and_not_beyond(s):
    # Amplification of y' = -y over a step z: |R_s(z)| <= 1 on [0, beta(s)] (the damped
    # interval; the true edge lies a little further out for small s), > 1 at 1.5 beta(s).
    beta = stability_bound(s)
    for z, inside in [(beta * k / 50, True) for k in range(1, 51)] + [(1.5 * beta, False), (2.0 * beta, False)]:
        problem = CountingProblem(FunctionProblem(lambda t, y: -y))
        ev = problem.evaluate(0.0, torch.ones(1, dtype=torch.float64))
        # rho is the truth (1), so the step makes no power iteration; the safety factor
        # makes h * safety * rho = beta(s), whose fewest stable stages are s.
        stepper = Chebyshev(safety=beta / z * (1 - 1e-12))  # not rounded up past beta(s)
        stepper.rho = 1.0
        y = stepper.step(ev, z, problem)
        assert stepper.stages == s and problem.count == 1 + (s - 1)
        assert (abs(float(y)) <= 1.0) == inside, (s, z / beta, float(y))


def test_stage_count_is_the_fewest_whose_interval_holds_h_times_safety_times_rho():
    stepper = Chebyshev(safety=1.2)
    stepper.rho = 3.7
    for h in [1e-3, 0.5, 2.0, 17.0, 300.0, 4000.0]:
        s = stepper.stages_for(h)
        need = h * 1.2 * 3.7
        assert stability_bound(s) >= need
        assert s == 2 or stability_bound(s - 1) < need, (h, s)
    assert stepper.stages_for(1e9) == stepper.max_stages


def test_spectral_radius_finds_the_top_eigenvalue_of_a_symmetric_jacobian():
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    eigenvalues = torch.cat([torch.tensor([50.0, 20.0], dtype=torch.float64), torch.rand(28, generator=gen, dtype=torch.float64)])
    problem = CountingProblem(_linear(q @ torch.diag(eigenvalues) @ q.T))
    ev = problem.evaluate(0.0, torch.randn(30, generator=gen, dtype=torch.float64))
    stepper = Chebyshev()
    rho = stepper.spectral_radius(problem, ev)
    assert rho == pytest.approx(50.0, rel=0.02)
    # Warm-started from the converged eigenvector, the next estimate costs two evaluations.
    before = problem.count
    assert stepper.spectral_radius(problem, ev) == pytest.approx(50.0, rel=1e-3)
    assert problem.count - before == 2


def test_chebyshev_is_second_order_on_a_smooth_non_autonomous_problem():
    # y' = -y + sin t, y(0) = 1: y = (sin t - cos t) / 2 + 1.5 e^{-t}; the stage times matter.
    problem = FunctionProblem(lambda t, y: -y + math.sin(t))
    exact = (math.sin(1.0) - math.cos(1.0)) / 2 + 1.5 * math.exp(-1.0)
    errors = []
    for n in (10, 20, 40, 80):
        method = Adaptive(Chebyshev(), FixedStep(1.0 / n), dt0=1.0 / n)
        sol = integrate(problem, torch.ones(1, dtype=torch.float64), (0.0, 1.0), method)
        errors.append(abs(float(sol.y) - exact))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(1.9 < p < 2.1 for p in orders), (errors, orders)


def test_stiff_decay_is_accurate_at_a_fraction_of_the_evaluations_euler_stability_needs():
    problem, rates = _stiff_decay()
    y0, t_end = torch.ones(40, dtype=torch.float64), 100.0
    exact = torch.exp(-rates * t_end) * y0
    # Explicit Euler is stable only for dt <= 2 / 1000: at least 50,000 evaluations.
    euler_floor = t_end * float(rates.max()) / 2
    errors = []
    for rtol in (1e-3, 1e-4, 1e-5, 1e-6):
        sol = integrate(problem, y0, (0.0, t_end), Adaptive(Chebyshev(), LocalError(rtol, rtol * 1e-3), dt0=1e-3))
        assert sol.stop.status == "finished"
        errors.append(float((sol.y - exact).abs().max()))
        assert sol.counters.evals < euler_floor / 3, (rtol, sol.counters.evals)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-5, errors


def test_local_error_controller_rejects_and_shrinks_when_the_estimate_exceeds_the_tolerance():
    problem = CountingProblem(FunctionProblem(lambda t, y: -y))
    before = problem.evaluate(0.0, torch.ones(3, dtype=torch.float64))
    controller = LocalError(rtol=1e-6, atol=0.0)
    for h, accept in [(1e-3, True), (0.5, False)]:
        after = problem.evaluate(h, before.y * (1 - h + h * h / 2))  # a second-order step
        decision = controller.adapt(before, after, h, h)
        assert decision.accept is accept and (decision.dt_next > h) is accept, (h, decision)
        # For this step est = (12 (y - y') + 6 h (F + F')) / 15 = -h^3 / 5 exactly (the true
        # local error is h^3 / 6); |y| <= 1 so the scale is rtol.
        assert decision.ratios["error"] == pytest.approx(h**3 / 5 / 1e-6, rel=1e-5)
