"""The central flow's semidefinite complementarity problem: closed form at k = 1, brute force
at k = 2, 3, and the complementarity conditions themselves."""

import numpy as np
import pytest
import scipy.optimize

from gflow import complementarity


def _problem(k: int, seed: int, n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((k, k, n))
    g = (g + g.transpose(1, 0, 2)) / 2  # g_ij = g_ji, as gradients of u_i^T H u_j
    beta = rng.standard_normal((k, k))
    return np.einsum("ijn,kln->ijkl", g, g), (beta + beta.T) / 2


def _objective(gram: np.ndarray, beta: np.ndarray, x: np.ndarray) -> float:
    return 0.25 * float(np.einsum("ij,ijkl,kl->", x, gram, x)) - float(np.sum(beta * x))


def _brute_force(gram: np.ndarray, beta: np.ndarray, k: int, starts: int = 30) -> tuple[np.ndarray, float]:
    """min over X = L L^T of the quadratic, BFGS from many random starts: no cone, no projection."""
    rng = np.random.default_rng(0)
    rows, cols = np.tril_indices(k)

    def q(entries: np.ndarray) -> float:
        lower = np.zeros((k, k))
        lower[rows, cols] = entries
        return _objective(gram, beta, lower @ lower.T)

    best = min((scipy.optimize.minimize(q, rng.standard_normal(len(rows)), method="BFGS", options={"gtol": 1e-12})
                for _ in range(starts)), key=lambda r: r.fun)
    lower = np.zeros((k, k))
    lower[rows, cols] = best.x
    return lower @ lower.T, best.fun


def test_one_critical_eigenvalue_gives_the_projection_closed_form():
    rng = np.random.default_rng(3)
    for _ in range(20):
        g, grad = rng.standard_normal(5), rng.standard_normal(5)
        gram, beta = np.array(g @ g).reshape(1, 1, 1, 1), np.array([[-(g @ grad)]])
        x = complementarity.solve(gram, beta).x[0, 0]
        assert x == pytest.approx(max(0.0, -2 * (g @ grad) / (g @ g)), rel=1e-14, abs=1e-300)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("seed", range(6))
def test_the_solution_matches_brute_force_minimisation(k, seed):
    gram, beta = _problem(k, seed)
    solution = complementarity.solve(gram, beta)
    reference, best = _brute_force(gram, beta, k)
    assert _objective(gram, beta, solution.x) <= best + 1e-10 * max(1.0, abs(best))
    # The quadratic is strictly convex here (7 > 6 independent g's): the minimiser is unique.
    assert np.abs(solution.x - reference).max() < 1e-6 * max(1.0, np.abs(reference).max())


@pytest.mark.parametrize("k", [2, 3, 4])
def test_the_solution_satisfies_the_complementarity_conditions(k):
    for seed in range(10):
        gram, beta = _problem(k, 100 + seed, n=12)
        s = complementarity.solve(gram, beta)
        scale = np.abs(beta).max()
        assert np.linalg.eigvalsh(s.x).min() >= -1e-12 * scale  # X >= 0
        assert np.linalg.eigvalsh(s.slack).min() >= -1e-9 * scale  # M(X) - beta >= 0
        assert abs(np.sum(s.x * s.slack)) <= 1e-9 * scale * max(1.0, np.abs(s.x).max())  # <X, Z> = 0
        assert s.residual <= 1e-12


def test_the_equality_solution_is_the_sdcp_solution_while_positive_definite():
    gram, _ = _problem(2, 7)
    x_true = np.array([[2.0, 0.3], [0.3, 1.0]])
    beta = 0.5 * np.einsum("ijkl,kl->ij", gram, x_true)  # M(X) = beta exactly
    assert np.allclose(complementarity.equality_solution(gram, beta), x_true, rtol=1e-10)
    assert np.allclose(complementarity.solve(gram, beta).x, x_true, rtol=1e-8)


def test_nothing_to_hold_gives_zero():
    gram, beta = _problem(3, 1)
    negative = -np.eye(3) - beta @ beta  # negative definite: every direction is leaving
    assert np.abs(complementarity.solve(gram, negative).x).max() < 1e-12
