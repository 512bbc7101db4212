"""The semidefinite complementarity problem (SDCP) that sets the central flow's covariance.

With U = [u_1..u_k] the Hessian eigenvectors at the edge of stability and the curvature
gradients g_ij = grad_w (u_i^T H(w) u_j), the flow dw/dt = -(grad L + 1/2 sum_kl X_kl g_kl)
moves the k x k block U^T H U at the rate

    d/dt (U^T H U) = beta - M(X),   beta_ij = -<g_ij, grad L>,   M(X)_ij = 1/2 sum_kl <g_ij, g_kl> X_kl.

The central flow (Cohen, Damian, Talwalkar, Kolter, Lee, ICLR 2025) takes the X that keeps
the block from rising past 2/eta while acting only where it is at the edge:

    X >= 0,   Z = M(X) - beta >= 0,   <X, Z> = 0          (>= : positive semidefinite)

M is a Gram operator (self-adjoint, positive semidefinite on symmetric matrices), so these
are exactly the optimality conditions of the convex quadratic program

    min_{X >= 0}  q(X) = 1/2 <X, M(X)> - <beta, X>,

solved here by accelerated projected gradient (FISTA with adaptive restart, O'Donoghue and
Candes 2015; the projection onto the PSD cone clips eigenvalues at 0), polished by a Newton
step on the face the iterate identifies (X = Q Y Q^T, Q the range of X: one linear solve
in the r(r+1)/2 entries of Y). k is small (the eigenvalues at the edge), so all of it is
dense k x k algebra. With k = 1 it is the closed form X = max(0, beta / M).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Solution:
    """X (k x k, PSD), the slack Z = M(X) - beta, and the KKT residual
    ||X - P_psd(X - Z)||_F relative to the problem's scale (0 at an exact solution)."""

    x: np.ndarray
    slack: np.ndarray
    residual: float
    iterations: int


def _basis(k: int) -> list[np.ndarray]:
    """An orthonormal basis of the symmetric k x k matrices (Frobenius inner product)."""
    out = []
    for i in range(k):
        for j in range(i, k):
            e = np.zeros((k, k))
            if i == j:
                e[i, i] = 1.0
            else:
                e[i, j] = e[j, i] = 1 / np.sqrt(2)
            out.append(e)
    return out


def operator(gram: np.ndarray) -> np.ndarray:
    """M as a matrix on the coordinates of :func:`_basis`: ``gram[i, j, k, l]`` = <g_ij, g_kl>."""
    k = gram.shape[0]
    basis = _basis(k)
    images = [0.5 * np.einsum("ijkl,kl->ij", gram, e) for e in basis]
    return np.array([[np.sum(a * b) for b in images] for a in basis])


def _apply(gram: np.ndarray, x: np.ndarray) -> np.ndarray:
    return 0.5 * np.einsum("ijkl,kl->ij", gram, x)


def project_psd(x: np.ndarray) -> np.ndarray:
    """The nearest positive semidefinite matrix in Frobenius norm (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh((x + x.T) / 2)
    return (vectors * np.maximum(values, 0.0)) @ vectors.T


def residual(gram: np.ndarray, beta: np.ndarray, x: np.ndarray) -> float:
    """||X - P_psd(X - Z)||_F / scale, Z = M(X) - beta: zero exactly at a solution."""
    z = _apply(gram, x) - beta
    scale = np.linalg.norm(beta) + np.linalg.norm(_apply(gram, x)) + 1e-300
    step = 1.0 / max(np.linalg.norm(operator(gram), 2), 1e-300)
    return float(np.linalg.norm(x - project_psd(x - step * z)) / step / scale)


def solve(gram: np.ndarray, beta: np.ndarray, tol: float = 1e-13, max_iterations: int = 20_000) -> Solution:
    """The X of the SDCP above, for ``gram[i, j, k, l]`` = <g_ij, g_kl> and symmetric ``beta``."""
    k = beta.shape[0]
    beta = (beta + beta.T) / 2
    if k == 1:
        m = 0.5 * gram[0, 0, 0, 0]
        x = np.array([[max(0.0, beta[0, 0] / m)]]) if m > 0 else np.zeros((1, 1))
        return Solution(x, _apply(gram, x) - beta, residual(gram, beta, x), 0)
    lipschitz = np.linalg.norm(operator(gram), 2)
    if lipschitz <= 0:
        return Solution(np.zeros((k, k)), -beta, residual(gram, beta, np.zeros((k, k))), 0)
    step = 1.0 / lipschitz
    x = project_psd(beta * step)
    momentum, previous, theta = x, x, 1.0
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        x = project_psd(momentum - step * (_apply(gram, momentum) - beta))
        if np.sum((_apply(gram, momentum) - beta) * (x - previous)) > 0:  # restart: the objective went up
            theta, momentum = 1.0, x
        else:
            theta_next = (1 + np.sqrt(1 + 4 * theta**2)) / 2
            momentum = x + (theta - 1) / theta_next * (x - previous)
            theta = theta_next
        previous = x
        if iterations % 10 == 0:
            polished = _polish(gram, beta, x)
            if polished is not None and residual(gram, beta, polished) <= tol:
                x = polished
                break
            if residual(gram, beta, x) <= tol:
                break
    return Solution(x, _apply(gram, x) - beta, residual(gram, beta, x), iterations)


def _polish(gram: np.ndarray, beta: np.ndarray, x: np.ndarray) -> np.ndarray | None:
    """The minimiser of q on the face {Q Y Q^T}, Q the range of ``x`` (a Newton step: q is
    quadratic), or None when that minimiser is not PSD."""
    values, vectors = np.linalg.eigh(x)
    keep = values > 1e-10 * max(values.max(initial=0.0), 1e-300)
    r = int(keep.sum())
    if r == 0:
        return np.zeros_like(x)
    q = vectors[:, keep]
    basis = _basis(r)
    lifted = [q @ e @ q.T for e in basis]
    images = [_apply(gram, e) for e in lifted]
    system = np.array([[np.sum(a * b) for b in images] for a in lifted])
    rhs = np.array([np.sum(e * beta) for e in lifted])
    y = np.linalg.lstsq(system, rhs, rcond=None)[0]
    candidate = sum(c * e for c, e in zip(y, lifted))
    if np.linalg.eigvalsh(candidate).min() < -1e-12 * max(np.abs(candidate).max(), 1e-300):
        return None
    return project_psd(candidate)


def equality_solution(gram: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """The X with M(X) = beta (least squares when M is singular): the SDCP's solution while
    it is positive definite, i.e. while every critical direction is held at the edge. Its
    smallest eigenvalue reaching 0 is where the flow leaves the edge along one direction."""
    k = beta.shape[0]
    basis = _basis(k)
    coordinates = np.linalg.lstsq(operator(gram), np.array([np.sum(e * beta) for e in basis]), rcond=None)[0]
    return sum(c * e for c, e in zip(coordinates, basis))
