"""Krylov subspaces of a problem's Jacobian, and the phi functions of exponential integrators.

The phi functions are phi_0(z) = e^z and phi_{k+1}(z) = (phi_k(z) - 1/k!) / z, so
phi_1(z) = (e^z - 1) / z. For an n x n matrix J and a vector b, phi_k(h J) b is
approximated in the Krylov space K_m = span{b, J b, ..., J^{m-1} b}: with the Arnoldi
relation J V_m = V_{m+1} H_{m+1,m} (V orthonormal, H upper Hessenberg),

    phi_k(h J) b ~ ||b|| V_m phi_k(h H_m) e_1,

which needs only m products J v and the phi functions of a small m x m matrix
(Saad, SIAM J. Numer. Anal. 29 (1992) 209-228; Hochbruck and Lubich, SIAM J. Numer. Anal.
34 (1997) 1911-1925). For a gradient flow J is minus the Hessian, whose spectrum is a few
large outliers over a bulk near zero; the Krylov space captures the outliers in a few
products, so m follows the bulk, not the stiffness (a Chebyshev polynomial pays
sqrt(h lambda_max) for the largest outlier alone).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .problem import CountingProblem, Evaluation


def phi_vectors(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """[phi_1(A) b, ..., phi_p(A) b] as the columns of an m x p array.

    The exponential of the augmented matrix [[A, b e_1^T], [0, K]], with K the p x p
    shift (ones above the diagonal), holds phi_k(A) b in the k-th column of its top-right
    block (Sidje, ACM TOMS 24 (1998) 130-156, Theorem 1), so one dense expm gives them all.
    torch's expm, not SciPy's: SciPy's BLAS threads keep spinning after each call and take
    the cores from the next gradient evaluation (3-4x slower evaluations on 2 cores).
    """
    m = a.shape[0]
    aug = np.zeros((m + p, m + p))
    aug[:m, :m] = a
    aug[:m, m] = b
    aug[m + np.arange(p - 1), m + 1 + np.arange(p - 1)] = 1.0
    return torch.linalg.matrix_exp(torch.from_numpy(aug)).numpy()[:m, m:]


class JacobianKrylov:
    """An orthonormal basis of K_m(J, b) for the Jacobian J = dF/dy at the state of ``ev``.

    Each product J v (||v|| = 1) is the forward difference (F(y + e v) - F(y)) / e with
    e = sqrt(machine eps) max(1, ||y||): one evaluation of the problem, counted like any
    other. Arnoldi with classical Gram-Schmidt applied twice keeps V orthonormal to
    rounding (Giraud et al., Numer. Math. 101 (2005) 87-100), with no symmetry assumed, so
    the momentum flow's Jacobian is as welcome as the gradient flow's -Hessian.
    """

    def __init__(self, problem: CountingProblem, ev: Evaluation, b: torch.Tensor, max_dim: int) -> None:
        self.problem, self.ev, self.max_dim = problem, ev, max_dim
        self.norm_b = float(b.norm())
        self.basis = [b / self.norm_b] if self.norm_b > 0 else []
        self.hessenberg = np.zeros((max_dim + 1, max_dim))
        self.dim = 0  # m: the basis vectors whose products J v are known
        self._stacked: torch.Tensor | None = None  # the basis as rows, restacked only when it grew
        self._step = math.sqrt(torch.finfo(ev.y.dtype).eps) * max(1.0, float(ev.y.norm()))

    def _rows(self, m: int) -> torch.Tensor:
        """The first m basis vectors as the rows of one matrix."""
        if self._stacked is None or len(self._stacked) < m:
            self._stacked = torch.stack(self.basis)
        return self._stacked[:m]

    @property
    def exhausted(self) -> bool:
        """True once K_m is J-invariant (lucky breakdown, or b = 0): phi(hJ) b is then exact in it."""
        return self.dim == len(self.basis)

    def extend(self) -> bool:
        """Add one dimension (one evaluation); False when the space can grow no further."""
        j = self.dim
        if self.exhausted or j >= self.max_dim:
            return False
        y, f = self.ev.y, self.ev.dydt
        w = (self.problem.evaluate(self.ev.t, y + self._step * self.basis[j]).dydt - f) / self._step
        v = self._rows(len(self.basis))
        for _ in range(2):
            c = v @ w
            w = w - v.T @ c
            self.hessenberg[: j + 1, j] += c.cpu().numpy()
        norm = float(w.norm())
        self.hessenberg[j + 1, j] = norm
        self.dim += 1
        if norm > 1e-12 * float(np.abs(self.hessenberg[: j + 1, j]).max(initial=norm)):
            self.basis.append(w / norm)  # else a lucky breakdown: K_m is J-invariant
        return True

    def square(self, m: int) -> np.ndarray:
        """H_m, the m x m projection V_m^T J V_m (m <= dim)."""
        return self.hessenberg[:m, :m]

    def combine(self, coefficients: np.ndarray) -> torch.Tensor:
        """V_m c: a vector of the space from its coordinates."""
        v = self._rows(len(coefficients))
        return v.T @ torch.as_tensor(coefficients, dtype=v.dtype, device=v.device)

    def apply(self, coefficients: np.ndarray) -> torch.Tensor:
        """J V_m c = V_{m+1} H_{m+1,m} c (the Arnoldi relation): no evaluation."""
        m = len(coefficients)
        return self.combine((self.hessenberg[: m + 1, :m] @ coefficients)[: len(self.basis)])

    def project(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """(V_m^T x, x - V_m V_m^T x): coordinates in the space and the remainder."""
        v = self._rows(self.dim)
        c = v @ x
        return c.cpu().numpy(), x - v.T @ c
