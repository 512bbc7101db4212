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
import scipy.linalg
import torch

from .problem import CountingProblem, Evaluation


def phi_vectors(a: np.ndarray, b: np.ndarray, p: int) -> np.ndarray:
    """[phi_1(A) b, ..., phi_p(A) b] as the columns of an m x p array.

    The exponential of the augmented matrix [[A, b e_1^T], [0, K]], with K the p x p
    shift (ones above the diagonal), holds phi_k(A) b in the k-th column of its top-right
    block (Sidje, ACM TOMS 24 (1998) 130-156, Theorem 1), so one dense expm gives them all.
    SciPy's expm: 19 us at order 14 against 128 us for torch's, with its BLAS held to one
    thread while an integration runs (solvers/blas.py).
    """
    m = a.shape[0]
    aug = np.zeros((m + p, m + p))
    aug[:m, :m] = a
    aug[:m, m] = b
    aug[m + np.arange(p - 1), m + 1 + np.arange(p - 1)] = 1.0
    return scipy.linalg.expm(aug)[:m, m:]


def difference_step(y: torch.Tensor) -> float:
    """The step e of the forward differences (F(y + e v) - F(y)) / e ~ J v (||v|| = 1):
    sqrt(eps) times a scale of the state. Too small an e and rounding y + e v swamps the
    difference; too large and its truncation, e F''(v, v) / 2, biases J v, and with it every
    Krylov space, systematically (rounding errors are incoherent across components and
    largely project out). In float64 the scale is max(1, ||y||) (Brown and Saad, SIAM J.
    Sci. Stat. Comput. 11 (1990) 450-481); in lower precision it is mean_i |y_i| + 1 (Knoll
    and Keyes, J. Comput. Phys. 193 (2004) 357-397, eq. 14). Measured on the default digits
    run (26,500 weights, ||y|| ~ 167, mean |y_i| ~ 0.8), against a float64 run at rtol 1e-9
    from the same w0: in float32 the ||y|| scale (e ~ 0.06) took 1,776 evaluations to an
    error of f(T) of 1.1e-3, the mean scale 727 to 5.1e-5; in float64 the two are alike
    (774 evaluations to 2.7e-5, and 758 to 3.2e-5 with the RMS of y), and float64 keeps the
    scale its benchmarks were measured with."""
    scale = max(1.0, float(y.norm())) if y.dtype == torch.float64 else float(y.abs().mean()) + 1.0
    return math.sqrt(torch.finfo(y.dtype).eps) * scale


GROWTH = 2
"""Rows a full basis grows by; a finished space's matrix is reused while it has at most
this many rows more than the next space expects to need."""

CANCELLATION = 100.0
"""A Gram-Schmidt pass that shrinks the vector by more than this factor is repeated."""


class JacobianKrylov:
    """An orthonormal basis of K_m(J, b) for the Jacobian J = dF/dy at the state of ``ev``.

    Each product J v (||v|| = 1) is the forward difference (F(y + e v) - F(y)) / e with
    e from :func:`difference_step`: one evaluation of the problem, counted like any other.
    Arnoldi with classical Gram-Schmidt, with no symmetry assumed, so the momentum flow's
    Jacobian is as welcome as the gradient flow's -Hessian. One pass leaves the new
    vector orthogonal to V up to about eps ||w|| / ||w - V V^T w||, the cancellation it
    suffered; a second pass, taken when that exceeds ``CANCELLATION`` (100), brings it to
    rounding ("twice is enough": Giraud et al., Numer. Math. 101 (2005) 87-100, with the
    Kahan-Parlett test at a looser threshold than 1/sqrt(2), since the integrator needs
    V orthonormal to 1e-12, not to eps). Each pass reads the whole basis. Measured on the
    default digits run and a 1M-parameter MLP: no first pass shrank its vector 100-fold
    (80-90% shrank it more than sqrt(2)-fold, which the classical test would have
    repeated), and the second pass, when taken anyway, corrected the vector by 4e-15-1.4e-14
    of its size (median), 1.3e-13 at most.

    The basis lives in the rows of one matrix, sized for ``expected_dim`` and grown by
    ``GROWTH`` rows when full: V_m is a view, never a copy (restacking a list of m vectors
    after each product was 5% of a run at a million parameters), and the orthogonalisation
    works in place, allocating nothing of the state's size.
    """

    def __init__(self, problem: CountingProblem, ev: Evaluation, b: torch.Tensor, max_dim: int,
                 expected_dim: int = 7, reuse: JacobianKrylov | None = None) -> None:
        self.problem, self.ev, self.max_dim = problem, ev, max_dim
        self.norm_b = float(b.norm())
        # Room for the dimension expected (the caller's guess) and its next vector.
        rows = min(max(expected_dim, 1) + 1, max_dim + 1)
        old = None if reuse is None else reuse._rows
        if old is not None and rows <= len(old) <= rows + GROWTH and old.shape[1] == b.numel() and (
                old.dtype, old.device) == (b.dtype, b.device):
            # A space done with (``reuse``: its basis is overwritten) lends its matrix: its
            # pages are resident already, where a new one's would be faulted in afresh (a
            # basis larger than glibc's mmap threshold, 32 MB, is mapped anew each step).
            # Not a much larger one: its spare rows would be held through every step (at a
            # million parameters, 12 rows where m ~ 6 needed 8: 35 MB of the run's peak).
            self._rows = old
        else:
            del old  # with the release, before the new one is made: not both held at once
            if reuse is not None:
                reuse.release()
            self._rows = b.new_empty((rows, b.numel()))
        self.size = 0  # basis vectors held: dim, or dim + 1 (the next product's direction)
        if self.norm_b > 0:
            torch.div(b, self.norm_b, out=self._rows[0])
            self.size = 1
        self.hessenberg = np.zeros((max_dim + 1, max_dim))
        self.dim = 0  # m: the basis vectors whose products J v are known
        self._step = difference_step(ev.y)

    def release(self) -> None:
        """Let go of the basis' matrix: for a space done with (it has no basis after)."""
        self._rows = self._rows.new_empty((0, self._rows.shape[1]))
        self.size = self.dim = 0

    @property
    def basis(self) -> torch.Tensor:
        """The basis vectors as the rows of one matrix (a view)."""
        return self._rows[: self.size]

    @property
    def exhausted(self) -> bool:
        """True once K_m is J-invariant (lucky breakdown, or b = 0): phi(hJ) b is then exact in it."""
        return self.dim == self.size

    def _next_row(self) -> torch.Tensor:
        """The row the next basis vector goes to, ``GROWTH`` rows added when full (m
        changes by a row or two between steps, so a doubled basis would mostly hold
        unused rows; a growth copies the basis once)."""
        if self.size == len(self._rows):
            grown = self._rows.new_empty((min(self.size + GROWTH, self.max_dim + 1), self._rows.shape[1]))
            grown[: self.size] = self._rows
            self._rows = grown
        return self._rows[self.size]

    def extend(self) -> bool:
        """Add one dimension (one evaluation); False when the space can grow no further."""
        j = self.dim
        if self.exhausted or j >= self.max_dim:
            return False
        y, f, e = self.ev.y, self.ev.dydt, self._step
        w = self.problem.evaluate(self.ev.t, torch.add(y, self._rows[j], alpha=e)).dydt
        # w = F(y + e v) - F(y) ~ e J v, orthogonalised unscaled: its coordinates and norm are
        # divided by e instead (two passes over the state fewer than scaling w).
        w = torch.sub(w, f, out=w if w is not f else None)
        v, coordinates = self.basis, 0.0
        for _ in range(2):
            c = torch.mv(v, w)
            w.addmv_(v.T, c, alpha=-1.0)
            coordinates = coordinates + c.cpu().numpy()
            norm = float(w.norm())
            # ||w|| before the pass is hypot(||c||, ||w - V c||) (V orthonormal): no pass over w.
            if norm * CANCELLATION >= math.hypot(norm, float(np.linalg.norm(coordinates))):
                break
        column = self.hessenberg[:, j]
        column[: j + 1], column[j + 1] = coordinates / e, norm / e
        self.dim += 1
        if column[j + 1] > 1e-12 * float(np.abs(column[: j + 2]).max()):
            torch.div(w, norm, out=self._next_row())  # else a lucky breakdown: K_m is J-invariant
            self.size += 1
        return True

    def square(self, m: int) -> np.ndarray:
        """H_m, the m x m projection V_m^T J V_m (m <= dim)."""
        return self.hessenberg[:m, :m]

    def combine(self, coefficients: np.ndarray) -> torch.Tensor:
        """V_m c: a vector of the space from its coordinates; for an m x k array of
        coordinates, the k vectors as rows (one pass over the basis)."""
        v = self._rows[: len(coefficients)]
        c = torch.as_tensor(coefficients, dtype=v.dtype, device=v.device)
        return torch.mv(v.T, c) if c.ndim == 1 else c.T @ v

    def apply(self, coefficients: np.ndarray) -> torch.Tensor:
        """J V_m c = V_{m+1} H_{m+1,m} c (the Arnoldi relation): no evaluation."""
        m = len(coefficients)
        return self.combine((self.hessenberg[: m + 1, :m] @ coefficients)[: self.size])

    def project(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """(V_m^T x, x - V_m V_m^T x): coordinates in the space and the remainder."""
        v = self._rows[: self.dim]
        c = torch.mv(v, x)
        return c.cpu().numpy(), torch.addmv(x, v.T, c, alpha=-1.0)
