import math

import numpy as np
import pytest
import scipy.integrate
import torch

from solvers import (
    EXPRB43,
    EXPRB53S3,
    Adaptive,
    Chebyshev,
    ExponentialRosenbrock,
    FunctionProblem,
    LocalError,
    Observer,
    TorchDiffEq,
    hermite,
    integrate,
)
from solvers.dense import hermite_pair


def test_hermite_is_exact_for_cubics():
    def y(t):
        return torch.tensor([2 * t**3 - t**2 + 0.5 * t - 3.0])

    def dy(t):
        return torch.tensor([6 * t**2 - 2 * t + 0.5])

    for t in (0.3, 0.9, 1.6):
        assert float(hermite(t, 0.2, y(0.2), dy(0.2), 1.7, y(1.7), dy(1.7))) == pytest.approx(float(y(t)), rel=1e-13)


def test_hermite_error_is_fourth_order_in_the_spacing():
    def err(h):
        t0, t1 = 1.0, 1.0 + h
        y0, y1 = torch.tensor([math.exp(-t0)]), torch.tensor([math.exp(-t1)])
        mid = 0.5 * (t0 + t1)
        return abs(float(hermite(mid, t0, y0, -y0, t1, y1, -y1)) - math.exp(-mid))

    errors = [err(h) for h in (0.1, 0.05, 0.025)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(p - 4.0) < 0.1 for p in orders), orders
    assert errors[0] <= 0.1**4 * math.exp(-1.0) / 384  # the textbook bound at the midpoint


def test_hermite_rejects_an_empty_interval():
    with pytest.raises(ValueError, match="empty"):
        hermite(1.0, 1.0, torch.zeros(1), torch.zeros(1), 1.0, torch.zeros(1), torch.zeros(1))


# --- dense output of the methods: saves that do not cut steps -------------------------------------



def test_the_hermite_derivative_is_the_cubics_derivative():
    def y(t):
        return torch.tensor([2 * t**3 - t**2 + 0.5 * t - 3.0])

    def dy(t):
        return torch.tensor([6 * t**2 - 2 * t + 0.5])

    for t in (0.3, 0.9, 1.6):
        value, slope = hermite_pair(t, 0.2, y(0.2), dy(0.2), 1.7, y(1.7), dy(1.7))
        assert float(value) == pytest.approx(float(y(t)), rel=1e-13)
        assert float(slope) == pytest.approx(float(dy(t)), rel=1e-12)


class Saves(Observer):
    def __init__(self):
        self.records, self.steps, self.ends = [], [], []

    def on_save(self, record):
        self.records.append(record)

    def on_step(self, record):
        self.steps.append(record.ev.t)
        self.ends.append(record.ev)


def _stiff():
    """30 linear modes with rates 1e-2..1e3 plus a slow cubic term, and its Radau reference."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(-torch.logspace(-2, 3, 30, dtype=torch.float64)) @ q.T
    an = a.numpy()
    problem = FunctionProblem(lambda t, y: a @ y - 0.1 * y**3)
    y0 = torch.linspace(-1, 1, 30, dtype=torch.float64)
    ref = scipy.integrate.solve_ivp(lambda t, y: an @ y - 0.1 * y**3, (0.0, 20.0), y0.numpy(), method="Radau",
                                    jac=lambda t, y: an - np.diag(0.3 * y**2), rtol=1e-13, atol=1e-15,
                                    dense_output=True)
    return problem, y0, lambda t: torch.as_tensor(ref.sol(t))


def _exponential(rtol, scheme=EXPRB53S3):
    stepper = ExponentialRosenbrock(krylov_tol=rtol / 10, scheme=scheme)
    return Adaptive(stepper, LocalError(rtol, rtol * 1e-3, estimate=stepper.error_estimate, order=3), dt0=1e-2,
                    interpolates=True)


METHODS = {
    "exprb53s3 (phi-function output)": lambda: _exponential(1e-6),
    "exprb43 (phi-function output)": lambda: _exponential(1e-6, EXPRB43),
    "chebyshev (cubic Hermite)": lambda: Adaptive(Chebyshev(), LocalError(1e-6, 1e-9), dt0=1e-2, interpolates=True),
    "dopri5 (torchdiffeq's polynomial)": lambda: TorchDiffEq("dopri5", rtol=1e-8, atol=1e-11, interpolates=True),
}


@pytest.mark.parametrize("name", METHODS)
def test_saves_from_dense_output_cost_nothing_and_are_as_accurate_as_the_steps(name):
    """The same steps and evaluations with 60 saves as with one; the error of the states at
    interpolated save times against a tight reference stays below the method's own error at
    its step ends."""
    problem, y0, exact = _stiff()
    times = list(np.geomspace(1e-3, 20.0, 60))
    one, many = Saves(), Saves()
    lone = integrate(problem, y0, (0.0, 20.0), METHODS[name](), save_at=[20.0], observers=[one])
    sol = integrate(problem, y0, (0.0, 20.0), METHODS[name](), save_at=times, observers=[many])
    assert sol.counters.evals == lone.counters.evals and many.steps == one.steps
    interpolated = [r for r in many.records if r.ev is None]
    assert len(interpolated) > 40 and all(r.last.t > r.t for r in interpolated)
    save_error = max(float((r.y - exact(r.t)).abs().max()) for r in interpolated)
    step_error = max(float((exact(t) - y).abs().max()) for t, y in [(r.last.t, r.last.y) for r in interpolated])
    assert save_error <= 2 * step_error, (save_error, step_error)
    slopes = [(r.dydt, problem.evaluate(r.t, r.y).dydt) for r in interpolated]
    slope_error = max(float((d - true).abs().max() / true.abs().max()) for d, true in slopes)
    assert slope_error < 1e-3  # the derivative too, relative to its size (it gives the gradient norm at a save)


def test_every_save_of_one_step_but_the_last_leaves_the_checkpoint_alone():
    problem, y0, _ = _stiff()
    saves = Saves()
    integrate(problem, y0, (0.0, 20.0), _exponential(1e-4), save_at=list(np.linspace(10.0, 20.0, 40)),
              observers=[saves])
    by_step: dict[float, list] = {}
    for r in saves.records:
        by_step.setdefault(r.last.t, []).append(r)
    assert any(len(group) > 1 for group in by_step.values())
    for group in by_step.values():
        assert [r.closes_step for r in group] == [False] * (len(group) - 1) + [True]


@pytest.mark.parametrize("scheme", [EXPRB53S3, EXPRB43], ids=lambda s: s.name)
def test_the_exponential_continuous_output_is_as_accurate_as_the_step_ends_around_it_on_a_linear_flow(scheme):
    """For a linear flow the method is exact but for its Krylov truncation (krylov_tol) and
    finite-difference products: the continuous output inside a step is as good as the
    step's two ends (whose errors, ~1e-11, are that noise)."""
    a = torch.diag(-torch.logspace(-2, 3, 12, dtype=torch.float64))
    problem = FunctionProblem(lambda t, y: a @ y)
    y0 = torch.ones(12, dtype=torch.float64)

    def error(t, y):
        return float((y - torch.exp(torch.diag(a) * t) * y0).abs().max())

    saves = Saves()
    sol = integrate(problem, y0, (0.0, 5.0), _exponential(1e-8, scheme), save_at=[0.37, 1.2, 4.1], observers=[saves])
    assert error(5.0, sol.y) < 1e-9
    ends = [(0.0, 0.0)] + [(ev.t, error(ev.t, ev.y)) for ev in saves.ends]
    for r in saves.records[:-1]:
        (start, start_error), (end, end_error) = next((a, b) for a, b in zip(ends, ends[1:]) if a[0] < r.t < b[0])
        assert r.ev is None and error(r.t, r.y) < 2 * max(start_error, end_error), (r.t, start, end)
        assert float((r.dydt - a @ (torch.exp(torch.diag(a) * r.t) * y0)).abs().max()) < 1e-9
