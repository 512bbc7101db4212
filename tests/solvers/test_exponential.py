"""The exponential Rosenbrock stepper, its Krylov spaces and the phi functions."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

from solvers import (
    EXPRB43,
    EXPRB53S3,
    Adaptive,
    CountingProblem,
    ExponentialRosenbrock,
    FixedStep,
    FunctionProblem,
    LocalError,
    integrate,
)
from solvers.krylov import GROWTH, JacobianKrylov, phi_vectors

from .problems import oscillator, oscillator_solution


def _linear(matrix: torch.Tensor) -> FunctionProblem:
    return FunctionProblem(lambda t, y: matrix @ y)


def _symmetric(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64))
    return q @ torch.diag(eigenvalues) @ q.T


def _method(rtol: float = 1e-6, **kwargs) -> Adaptive:
    stepper = ExponentialRosenbrock(**kwargs)
    return Adaptive(stepper, LocalError(rtol, rtol * 1e-3, estimate=stepper.error_estimate, order=3), dt0=1e-2)


def test_phi_vectors_match_their_integral_definition_for_a_non_normal_matrix():
    # phi_k(A) b = int_0^1 e^{(1 - s) A} s^{k-1} / (k-1)! ds b.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)) - 2 * np.eye(5), rng.normal(size=5)
    got = phi_vectors(a, b, 3)
    for k in (1, 2, 3):
        exact, _ = scipy.integrate.quad_vec(
            lambda s, k=k: scipy.linalg.expm((1 - s) * a) @ b * s ** (k - 1) / math.factorial(k - 1), 0, 1,
            epsabs=1e-13, epsrel=1e-12)
        np.testing.assert_allclose(got[:, k - 1], exact, rtol=1e-9, atol=1e-12)


def test_phi_vectors_of_a_scalar_are_the_closed_forms():
    for z in (-50.0, -1.0, -1e-3, 0.7):
        got = phi_vectors(np.array([[z]]), np.array([1.0]), 3)[0]
        closed = [(math.exp(z) - 1) / z, (math.exp(z) - 1 - z) / z**2, (math.exp(z) - 1 - z - z**2 / 2) / z**3]
        np.testing.assert_allclose(got, closed, rtol=1e-6 if abs(z) < 1e-2 else 1e-12)


def test_arnoldi_relation_holds_and_the_basis_is_orthonormal():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(40, 40, generator=gen, dtype=torch.float64)  # no symmetry
    problem = CountingProblem(_linear(a))
    ev = problem.evaluate(0.0, torch.randn(40, generator=gen, dtype=torch.float64))
    space = JacobianKrylov(problem, ev, ev.dydt, max_dim=12)
    while space.extend():
        pass
    assert space.dim == 12 and problem.count == 1 + 12  # one evaluation per product
    v = space.basis  # the rows of one matrix, which grew from 8 rows to 16
    assert torch.allclose(v @ v.T, torch.eye(13, dtype=torch.float64), atol=1e-13)
    # J V_m = V_{m+1} H_{m+1,m}, up to the forward difference's error.
    h = torch.as_tensor(space.hessenberg[:13, :12])
    assert torch.allclose(a @ v[:12].T, v.T @ h, atol=1e-6 * float(a.norm()))


def test_a_space_that_reuses_a_finished_ones_matrix_is_bitwise_a_fresh_one():
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    problem = CountingProblem(_linear(a))
    first = problem.evaluate(0.0, torch.randn(30, generator=gen, dtype=torch.float64))
    ev = problem.evaluate(0.0, torch.randn(30, generator=gen, dtype=torch.float64))
    done = JacobianKrylov(problem, first, first.dydt, max_dim=9)
    while done.extend():
        pass
    matrix = done._rows
    reused = JacobianKrylov(problem, ev, ev.dydt, max_dim=9, expected_dim=8, reuse=done)
    fresh = JacobianKrylov(problem, ev, ev.dydt, max_dim=9, expected_dim=8)
    while reused.extend() and fresh.extend():
        pass
    assert reused._rows is matrix and fresh._rows is not matrix  # no new matrix, its pages resident
    assert torch.equal(reused.basis, fresh.basis)
    assert np.array_equal(reused.hessenberg, fresh.hessenberg)
    narrow = JacobianKrylov(problem, ev, ev.dydt.float(), max_dim=9, reuse=done)  # another dtype: its own
    assert narrow._rows is not matrix and narrow._rows.dtype == torch.float32


def test_a_space_does_not_keep_a_much_larger_finished_matrix_and_frees_it_first():
    # A matrix with more than GROWTH spare rows would hold them through every step: the
    # new space makes its own, and the finished space lets go of its matrix before.
    gen = torch.Generator().manual_seed(5)
    problem = CountingProblem(_linear(torch.randn(30, 30, generator=gen, dtype=torch.float64)))
    ev = problem.evaluate(0.0, torch.randn(30, generator=gen, dtype=torch.float64))
    done = JacobianKrylov(problem, ev, ev.dydt, max_dim=12)
    while done.extend():
        pass
    assert len(done._rows) == 13
    small = JacobianKrylov(problem, ev, ev.dydt, max_dim=12, expected_dim=3, reuse=done)
    assert len(small._rows) == 4 and done._rows.numel() == 0
    capacities = {len(small._rows)}
    while small.extend():
        capacities.add(len(small._rows))
    assert sorted(capacities) == [4, 4 + GROWTH, 4 + 2 * GROWTH, 4 + 3 * GROWTH, 4 + 4 * GROWTH, 13] and small.dim == 12


def test_krylov_space_of_a_small_system_stops_at_its_invariant_dimension():
    problem = CountingProblem(_linear(_symmetric(torch.tensor([-1.0, -2.0, -3.0, -4.0], dtype=torch.float64))))
    ev = problem.evaluate(0.0, torch.ones(4, dtype=torch.float64))
    space = JacobianKrylov(problem, ev, ev.dydt, max_dim=10)
    while space.extend():
        pass
    assert space.exhausted and space.dim == 4


def test_one_step_is_exact_on_a_stiff_linear_flow_at_any_step_size():
    # Eigenvalues from -1e4 to -1e-2: explicit Euler would need h < 2e-4. A linear flow
    # has no nonlinear remainder, so one exponential step is exp(hA) y0 whatever h, for
    # the matrix that the forward differences apply: A + E with ||E|| ~ eps ||F|| / e
    # (their rounding), and ||exp(h(A + E)) - exp(hA)|| <= h ||E|| for A <= 0.
    a = _symmetric(-torch.logspace(-2, 4, 30, dtype=torch.float64))
    y0 = torch.linspace(-1, 1, 30, dtype=torch.float64)
    e = math.sqrt(torch.finfo(torch.float64).eps) * float(y0.norm())
    rounding = torch.finfo(torch.float64).eps * float((a @ y0).norm()) / e * math.sqrt(30)
    for h in (1e-3, 1.0, 100.0):
        problem = CountingProblem(_linear(a))
        stepper = ExponentialRosenbrock(krylov_tol=1e-10)
        y = stepper.step(problem.evaluate(0.0, y0), h, problem)
        exact = torch.linalg.matrix_exp(h * a) @ y0
        bound = (h * rounding + 1e-10) * float(y0.norm())
        assert float((y - exact).norm()) < bound, (h, float((y - exact).norm()), bound)
        assert stepper.krylov <= 30


def test_step_is_exact_for_the_damped_oscillator_whose_jacobian_has_complex_eigenvalues():
    k, tau, h = 4.0, 1.0, 3.0
    problem = CountingProblem(oscillator(k, tau))
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    y = ExponentialRosenbrock(krylov_tol=1e-12).step(problem.evaluate(0.0, y0), h, problem)
    assert float(y[0]) == pytest.approx(oscillator_solution(k, tau, h), abs=1e-7)


SCHEMES = pytest.mark.parametrize("scheme", [EXPRB43, EXPRB53S3], ids=lambda s: s.name)


def _nonlinear_with_a_linear_part() -> FunctionProblem:
    a = torch.tensor([[-3.0, 1.0], [0.5, -1.0]], dtype=torch.float64)
    return FunctionProblem(lambda t, y: a @ y - y**3 + torch.sin(y).flip(0))


@SCHEMES
def test_each_scheme_has_its_order_on_smooth_nonlinear_problems(scheme):
    # y' = -y^3: y(t) = 1 / sqrt(1 + 2 t y0^2); and a non-normal linear part with coupled
    # nonlinear terms against a reference from the same stepper at 1/32 of the step.
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)

    def solve(problem, n, stepper_scheme):
        method = Adaptive(ExponentialRosenbrock(krylov_tol=1e-14, scheme=stepper_scheme), FixedStep(2.0 / n), dt0=2.0 / n)
        return integrate(problem, y0, (0.0, 2.0), method).y

    cubic = FunctionProblem(lambda t, y: -(y**3))
    mixed = _nonlinear_with_a_linear_part()
    for problem, exact in [(cubic, y0 / torch.sqrt(1 + 2 * y0**2 * 2.0)), (mixed, solve(mixed, 2048, EXPRB53S3))]:
        errors = [float((solve(problem, n, scheme) - exact).abs().max()) for n in (16, 32, 64)]
        orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
        assert all(scheme.order - 0.2 < p < scheme.order + 0.6 for p in orders), (errors, orders)


@SCHEMES
def test_error_estimate_is_the_third_order_solutions_local_error(scheme):
    # The estimate, y_{n+1} minus the embedded third-order solution, shrinks like h^4 and
    # tracks that solution's true local error.
    problem = CountingProblem(FunctionProblem(lambda t, y: -(y**3)))
    y0 = torch.tensor([1.0], dtype=torch.float64)
    ev = problem.evaluate(0.0, y0)
    ratios, sizes = [], []
    for h in (0.02, 0.01):
        stepper = ExponentialRosenbrock(krylov_tol=1e-12, scheme=scheme)
        y = stepper.step(ev, h, problem)
        est = float(stepper.error_estimate(ev, problem.evaluate(h, y), h))
        true_embedded_error = float(y) - est - 1 / math.sqrt(1 + 2 * h)
        ratios.append(est / -true_embedded_error)
        sizes.append(abs(est))
    assert all(r == pytest.approx(1.0, rel=0.1) for r in ratios), ratios
    assert math.log2(sizes[0] / sizes[1]) == pytest.approx(4.0, abs=0.2), sizes


def test_a_step_beyond_the_stiff_limit_is_taken_with_the_stiff_scheme():
    # h rho, rho the largest |Ritz value| of the step's space, decides: here rho ~ 1e2.
    a = _symmetric(-torch.logspace(-2, 2, 12, dtype=torch.float64), seed=2)
    problem = CountingProblem(FunctionProblem(lambda t, y: a @ y - 0.1 * y**3))
    ev = problem.evaluate(0.0, torch.linspace(-1, 1, 12, dtype=torch.float64))

    def step(h, **kwargs):
        stepper = ExponentialRosenbrock(krylov_tol=1e-10, **kwargs)
        y = stepper.step(ev, h, problem)
        end, _ = stepper.interpolant(ev, problem.evaluate(h, y), h)(h)
        return y, end

    for h, expected in [(0.5, EXPRB53S3), (5.0, EXPRB43)]:  # h rho ~ 50 and ~ 500
        y, end = step(h, scheme=EXPRB53S3, stiff_scheme=EXPRB43, stiff_limit=150.0)
        alone, _ = step(h, scheme=expected)
        assert torch.allclose(y, alone, rtol=0, atol=1e-14), h
        assert torch.allclose(end, y, rtol=0, atol=1e-12), h  # the dense output is that scheme's too


def test_the_schemes_weights_solve_the_stiff_order_conditions_3_and_4():
    # sum_i b_i c_i^2 = 2 phi_3 and sum_i b_i c_i^3 = 6 phi_4, with b_i = alpha_i phi_3 + beta_i phi_4,
    # and the published weights: exprb43 (16 phi_3 - 48 phi_4, -2 phi_3 + 12 phi_4), exprb53s3
    # (18 phi_3 - 60 phi_4, -250/81 phi_3 + 500/27 phi_4).
    for scheme, published in [(EXPRB43, ([16, -2], [-48, 12])), (EXPRB53S3, ([18, -250 / 81], [-60, 500 / 27]))]:
        alpha, beta = scheme.weights()
        c = np.array([scheme.c2, scheme.c3])
        np.testing.assert_allclose([alpha @ c**2, beta @ c**2, alpha @ c**3, beta @ c**3], [2, 0, 0, 6], atol=1e-12)
        np.testing.assert_allclose(alpha, published[0], rtol=1e-12)
        np.testing.assert_allclose(beta, published[1], rtol=1e-12)
        assert np.dot(scheme.embedded, c**2) == pytest.approx(2.0)


def test_stiff_nonlinear_flow_converges_to_an_implicit_reference_at_a_fraction_of_eulers_cost():
    # Fast linear decay on 30 modes (rates 1e-2 to 1e4) plus a slow cubic term; the
    # reference is SciPy's Radau IIA with the exact Jacobian at rtol 1e-12.
    a = _symmetric(-torch.logspace(-2, 4, 30, dtype=torch.float64), seed=1)
    problem = FunctionProblem(lambda t, y: a @ y - 0.1 * y**3)
    y0 = torch.linspace(-1, 1, 30, dtype=torch.float64)
    an = a.numpy()
    ref = scipy.integrate.solve_ivp(lambda t, y: an @ y - 0.1 * y**3, (0.0, 50.0), y0.numpy(), method="Radau",
                                    jac=lambda t, y: an - np.diag(0.3 * y**2), rtol=1e-12, atol=1e-14)
    reference = torch.as_tensor(ref.y[:, -1])
    errors = []
    for rtol in (1e-3, 1e-5, 1e-7):
        sol = integrate(problem, y0, (0.0, 50.0), _method(rtol, krylov_tol=rtol / 10))
        assert sol.stop.status == "finished"
        errors.append(float((sol.y - reference).abs().max()))
        # Explicit Euler's stability alone would cost 50 * 1e4 / 2 = 250,000 evaluations.
        assert sol.counters.evals < 250_000 / 25, (rtol, sol.counters.evals)
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-6, errors


def test_a_rejected_step_reuses_its_krylov_space():
    problem = CountingProblem(_linear(_symmetric(-torch.logspace(-1, 2, 20, dtype=torch.float64))))
    ev = problem.evaluate(0.0, torch.ones(20, dtype=torch.float64))
    stepper = ExponentialRosenbrock(krylov_tol=1e-8)
    stepper.step(ev, 1.0, problem)
    first = problem.count
    stepper.step(ev, 0.5, problem)  # the retry: a shorter step needs no new products
    assert problem.count - first == 2  # only the evaluations at U_2 and U_3


def test_unconverged_krylov_space_reports_its_change_in_the_error_estimate():
    problem = CountingProblem(_linear(_symmetric(-torch.logspace(-1, 3, 40, dtype=torch.float64))))
    ev = problem.evaluate(0.0, torch.ones(40, dtype=torch.float64))
    size, y = {}, {}
    for name, stepper in [("capped", ExponentialRosenbrock(max_krylov=3)), ("full", ExponentialRosenbrock(krylov_tol=1e-12))]:
        y[name] = stepper.step(ev, 1.0, problem)
        size[name] = float(stepper.error_estimate(ev, problem.evaluate(1.0, y[name]), 1.0).norm())
    # A linear flow has no remainder (only the forward differences' rounding): what the
    # capped step reports is its Krylov change, of the size of its actual error.
    actual = float((y["capped"] - y["full"]).norm())
    assert size["full"] < 1e-3 * size["capped"] and size["capped"] > 0.1 * actual, (size, actual)


def test_error_estimate_refuses_a_step_it_did_not_take():
    problem = CountingProblem(_linear(-torch.eye(2, dtype=torch.float64)))
    ev = problem.evaluate(0.0, torch.ones(2, dtype=torch.float64))
    stepper = ExponentialRosenbrock()
    with pytest.raises(RuntimeError, match="did not just take"):
        stepper.error_estimate(ev, ev, 0.1)
    y = stepper.step(ev, 0.1, problem)
    with pytest.raises(RuntimeError, match="did not just take"):
        stepper.error_estimate(ev, problem.evaluate(0.2, y), 0.2)


def test_error_estimate_is_handed_over_once_and_neither_it_nor_y_next_holds_the_others_storage():
    # The stepper keeps no reference to its estimate (freed once the controller has read
    # it); y_{n+1}, which lives through the next step, holds no storage of it, nor does the
    # estimate, which lives through the evaluation at y_{n+1}, hold any of y_{n+1}'s.
    problem = CountingProblem(_linear(_symmetric(-torch.logspace(-1, 2, 8, dtype=torch.float64))))
    ev = problem.evaluate(0.0, torch.ones(8, dtype=torch.float64))
    stepper = ExponentialRosenbrock()
    y = stepper.step(ev, 0.1, problem)
    after = problem.evaluate(0.1, y)
    estimate = stepper.error_estimate(ev, after, 0.1)
    for v in (y, estimate):
        assert v.untyped_storage().nbytes() == v.numel() * v.element_size()
    assert y.untyped_storage().data_ptr() != estimate.untyped_storage().data_ptr()
    with pytest.raises(RuntimeError, match="once per step"):
        stepper.error_estimate(ev, after, 0.1)


def test_a_state_at_rest_stays_there_at_no_cost():
    problem = CountingProblem(_linear(-torch.eye(3, dtype=torch.float64)))
    ev = problem.evaluate(0.0, torch.zeros(3, dtype=torch.float64))
    stepper = ExponentialRosenbrock()
    assert torch.equal(stepper.step(ev, 5.0, problem), ev.y) and problem.count == 1


@pytest.mark.parametrize("bad", [dict(krylov_tol=0.0), dict(max_krylov=0), dict(stiff_limit=0.0)])
def test_invalid_settings_are_rejected_with_their_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ExponentialRosenbrock(**bad)
