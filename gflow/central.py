"""Flows that model gradient descent at learning rate eta itself, in gflow's time t = k eta.

* The modified flow (Barrett and Dherin, "Implicit Gradient Regularization", ICLR 2021):
  gradient descent follows, to second order in eta and while eta lambda_max < 2,

      dw/dt = -grad (L + eta/4 ||grad L||^2) = -(grad L + eta/2 H grad L),

  one Hessian-vector product per evaluation.

* The central flow (Cohen, Damian, Talwalkar, Kolter, Lee, "Understanding Optimization in
  Deep Learning with Central Flows", ICLR 2025): the ODE gradient descent's time-averaged
  path follows at the edge of stability. With u_1..u_k the Hessian eigenvectors whose
  eigenvalues have reached 2/eta (the critical ones), Sigma = sum_ij X_ij u_i u_j^T the
  covariance of GD's oscillation about the path,

      dw/dt = -( grad L(w) + 1/2 grad_w <Sigma, H(w)> ) = -( grad L + 1/2 sum_ij X_ij g_ij ),
      g_ij  = grad_w (u_i^T H(w) u_j)        (u fixed: a third-derivative contraction),

  and X the solution of the complementarity problem that keeps U^T H U at or below 2/eta
  (:mod:`gflow.complementarity`). With one critical eigenvalue it is the gradient flow
  projected on the tangent of {S(w) = 2/eta}: X = sigma^2 = max(0, -2 <g, grad L> / ||g||^2).
  The time-averaged loss GD shows is predicted as L(w) + 1/2 <Sigma, H> = L + 1/2 tr(X U^T H U)
  (= L + tr(X) / eta at the edge), stored as ``central_loss`` beside ``central_sigma2`` = tr X.

Off the edge (every eigenvalue below 2/eta) the central flow is the gradient flow; reaching
the edge and leaving it are events the integrator locates (:class:`solvers.events.Crossing`),
so the flow is a hybrid system whose mode is the number k of critical eigenvalues:

* mode k -> k + 1 when lambda_(k+1)(w) reaches 2/eta from below;
* mode k -> k - 1 when the smallest eigenvalue of the X that would hold all k at the edge
  (M(X) = beta, :func:`gflow.complementarity.equality_solution`; for k = 1, X itself)
  reaches 0 from above: the flow then leaves the edge along that direction.

Within a mode the vector field is smooth; the top k + 1 eigenpairs are tracked by Lanczos
warm-started from the last state's vectors, to rounding (the exponential method's Jacobian
products are finite differences of this field). The drift off {U^T H U = 2/eta} that the
integration's own error leaves is damped by a Baumgarte term: beta carries
-kappa (2/eta I - U^T H U), kappa = 1/eta, so the block relaxes to 2/eta at the rate kappa;
the term vanishes on the exact path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from solvers import Evaluation
from solvers.events import Crossing, Stop

from . import complementarity
from .autodiff import composite_attention
from .config import RunConfig
from .data import Dataset
from .errors import ConfigError
from .flow import GradientFlow
from .hessian import Spectrum, hessian_vector_product, top_eigenvalues, track_top
from .losses import Loss
from .models import FlatModel, Linearized

# Residuals ||H u - lambda u|| / lambda_1 of the critical eigenpairs the vector field uses:
# near rounding, so that finite differences of the field (the exponential method's Jacobian
# products) are meaningful.
FIELD_TOL = 1e-12
# Of the eigenpairs an event reads (lambda_(k+1)): its eigenvalue is then exact to about
# the residual squared over the gap (1e-9 relative, measured on digits).
EVENT_TOL = 1e-6
# A state whose eigenvalue lies within this relative distance of 2/eta is at the edge (when
# an integration starts from a stored state: resume, replay).
EDGE_TOL = 1e-4
# At most this many critical eigenvalues are tracked.
MAX_CRITICAL = 8


class _Graph:
    """The training loss at w with its gradient's graph kept: products with H and
    gradients of u_i^T H u_j by further backward passes."""

    def __init__(self, flow: GradientFlow, w: torch.Tensor) -> None:
        self.w = w.detach().requires_grad_(True)
        with torch.enable_grad(), composite_attention():  # fused attention has no double backward
            parts = flow.model.parts(self.w)
            losses, outs = zip(*(flow._chunk_loss(parts, s) for s in flow._chunks(len(flow.x_train))))
            self.loss = sum(losses) + flow.penalty(self.w)
            self.f = torch.cat([f.detach() for f in outs])
            self.grad = torch.autograd.grad(self.loss, self.w, create_graph=True)[0]

    def hvp(self, v: torch.Tensor, graph: bool = False) -> torch.Tensor:
        """H v (with a graph through w when ``graph``, for one more derivative)."""
        with torch.enable_grad():
            out = torch.autograd.grad(self.grad, self.w, grad_outputs=v, retain_graph=True, create_graph=graph)[0]
        return out if graph else out.detach()


class ModifiedFlow(GradientFlow):
    """dw/dt = -(grad L + eta/2 H grad L): the modified flow of gradient descent at
    ``cfg.lr`` (module docstring). ``products`` counts the Hessian-vector products."""

    grad_key = "grad"  # dy/dt is not -grad L here

    def __init__(self, cfg: RunConfig, model: FlatModel | Linearized, data: Dataset, loss_fn: Loss,
                 sources: dict | None = None) -> None:
        super().__init__(cfg, model, data, loss_fn, sources)
        self.lr = float(cfg.lr)
        self.products = {"hvp": 0, "third": 0}

    def evaluate(self, t: float, y: torch.Tensor) -> Evaluation:
        graph = _Graph(self, y)
        grad = graph.grad.detach()
        self.products["hvp"] += 1
        dydt = -(grad + 0.5 * self.lr * graph.hvp(grad))
        return Evaluation(t=t, y=y, dydt=dydt, aux={"loss": graph.loss.detach(), "grad": grad, "f": graph.f})

    def gradient_norm(self, y: torch.Tensor, dydt: torch.Tensor) -> float:
        """||grad L(w)|| (one backward pass: dw/dt is not minus the gradient here)."""
        return float(self.loss_and_grad(self.weights(y))[1].norm())


@dataclass(frozen=True)
class Analysis:
    """What the central flow's field knows at a state in mode k: the top k + 1 eigenpairs
    (``spectrum``), the training loss, its gradient and outputs, the curvature gradients
    g (k x k x n), the block U^T H U (k x k), beta (with the Baumgarte term), the Gram
    tensor <g_ij, g_kl>, X (the field's, with the Baumgarte term) and ``sharpening``, beta
    without it, from which the predictions' X is solved when they are asked for (at saves,
    not at every evaluation; on the exact path the two X agree)."""

    spectrum: Spectrum | None
    loss: torch.Tensor
    grad: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    block: np.ndarray
    beta: np.ndarray
    gram: np.ndarray
    x: np.ndarray
    sharpening: np.ndarray

    @cached_property
    def physical(self) -> np.ndarray:
        """The X of beta without the Baumgarte term: what the predictions use."""
        return complementarity.solve(self.gram, self.sharpening).x if len(self.x) else self.x

    @property
    def velocity(self) -> torch.Tensor:
        """dw/dt = -(grad L + 1/2 sum_ij X_ij g_ij)."""
        if not len(self.x):
            return -self.grad
        return -(self.grad + 0.5 * torch.einsum("ij,ijn->n", torch.as_tensor(self.x).to(self.g), self.g))

    @property
    def sigma2(self) -> float:
        """tr X: the predicted variance of gradient descent's oscillation about the flow."""
        return float(np.trace(self.physical)) if len(self.physical) else 0.0

    @property
    def central_loss(self) -> float:
        """L + 1/2 <Sigma, H> = L + 1/2 tr(X U^T H U): gradient descent's predicted time-averaged loss."""
        return float(self.loss) + (0.5 * float(np.sum(self.physical * self.block)) if len(self.physical) else 0.0)


class CentralFlow(GradientFlow):
    """The central flow of gradient descent at learning rate ``cfg.lr`` (module docstring).

    ``critical``: the mode, the number of eigenvalues held at 2/eta. ``crossings()``: the
    located events of the current mode; ``cross(stop)`` switches the mode at one; ``settle(y)``
    sets the mode of a state an integration starts from. ``products`` counts the
    Hessian-vector products (``hvp``) and the backward passes through one (``third``).
    """

    grad_key = "grad"  # dy/dt is not -grad L here

    def __init__(self, cfg: RunConfig, model: FlatModel | Linearized, data: Dataset, loss_fn: Loss,
                 sources: dict | None = None) -> None:
        super().__init__(cfg, model, data, loss_fn, sources)
        self.lr = float(cfg.lr)
        self.edge = 2.0 / self.lr
        self.kappa = 1.0 / self.lr
        self.critical = 0
        self.products = {"hvp": 0, "third": 0}
        self._vectors: np.ndarray | None = None
        self._last: tuple[torch.Tensor, int, Analysis] | None = None
        self._spectra: tuple[torch.Tensor, int, float, Spectrum, int] | None = None
        if self.n_params < 3:
            raise ConfigError("flow", "central", f"needs a model with at least 3 parameters (this one has {self.n_params})")
        sharpness = float(self._spectrum(self.y0, 1, EVENT_TOL).values[0])
        if not sharpness < self.edge:
            raise ConfigError("lr", cfg.lr, f"the edge 2/lr = {self.edge:.6g} lies at or below the initial sharpness "
                              f"lambda_max = {sharpness:.6g}, where gradient descent is unstable from its first step: "
                              f"give lr < {2 / sharpness:.6g}")

    def _spectrum(self, y: torch.Tensor, count: int, tol: float, graph: _Graph | None = None) -> Spectrum:
        """The top ``count`` eigenpairs of H at state ``y`` with residuals <= ``tol`` lambda_1,
        continued from the last ones computed (:func:`gflow.hessian.track_top`, one guard
        vector more; through ``graph``'s products when given), by ARPACK when there are
        none yet; cached for the last y."""
        count = min(count, self.n_params - 2)
        if self._spectra is not None and self._spectra[0] is y and self._spectra[1] >= count \
                and self._spectra[2] <= tol and self._spectra[4] == self.critical:
            return self._spectra[3]
        w, p = self.weights(y), count + 1
        if self._vectors is None or self._vectors.shape[1] < p:
            spectrum = top_eigenvalues(self, w, p, min(tol, 1e-10), self._vectors)
        else:  # the critical ones followed by continuity: the field stays smooth past an entering event
            product = graph.hvp if graph is not None else hessian_vector_product(self, w)
            spectrum = track_top(product, self._vectors[:, :p], count, tol, self.w0, follow=self.critical)
        self.products["hvp"] += spectrum.products
        if self._vectors is not None and self._vectors.shape[1] > p:  # keep the deeper ones as later starts
            self._vectors = np.concatenate([spectrum.vectors, self._vectors[:, p:]], axis=1)
        else:
            self._vectors = spectrum.vectors
        self._spectra = (y, count, tol, spectrum, self.critical)
        return spectrum

    def analysis(self, y: torch.Tensor) -> Analysis:
        """The field's ingredients at state ``y`` in the current mode (cached for the last y)."""
        k = self.critical
        if self._last is not None and self._last[0] is y and self._last[1] == k:
            return self._last[2]
        w = self.weights(y)
        graph = _Graph(self, w)
        grad = graph.grad.detach()
        empty = np.zeros((0, 0))
        if k == 0:
            result = Analysis(None, graph.loss.detach(), grad, graph.f, grad.new_zeros((0, 0, len(grad))), empty,
                              empty, np.zeros((0, 0, 0, 0)), empty, empty)
        else:
            spectrum = self._spectrum(y, k, FIELD_TOL, graph)
            u = torch.from_numpy(spectrum.vectors[:, :k].copy()).to(w)
            hu = [graph.hvp(u[:, j], graph=True) for j in range(k)]
            self.products["hvp"] += k
            block = np.array([[float(u[:, i] @ hu[j].detach()) for j in range(k)] for i in range(k)])
            g = grad.new_zeros((k, k, len(grad)))
            with torch.enable_grad():
                for j in range(k):
                    for i in range(j + 1):
                        g[i, j] = g[j, i] = torch.autograd.grad(u[:, i] @ hu[j], graph.w, retain_graph=True)[0]
            self.products["third"] += k * (k + 1) // 2
            flat = g.reshape(k * k, -1)
            gram = (flat @ flat.T).reshape(k, k, k, k).cpu().double().numpy()
            # d/dt (U^T H U) = beta_0 - M(X), beta_0 = -<g, grad L>. X solves the SDCP with
            # beta = beta_0 - kappa (2/eta I - U^T H U), so that at the edge the block relaxes
            # to 2/eta at the rate kappa instead of drifting with the integration's error.
            sharpening = -torch.einsum("ijn,n->ij", g, grad).cpu().double().numpy()
            beta = sharpening - self.kappa * (self.edge * np.eye(k) - (block + block.T) / 2)
            x = complementarity.solve(gram, beta).x
            result = Analysis(spectrum, graph.loss.detach(), grad, graph.f, g, block, beta, gram, x, sharpening)
        self._last = (y, k, result)
        return result

    def evaluate(self, t: float, y: torch.Tensor) -> Evaluation:
        a = self.analysis(y)
        return Evaluation(t=t, y=y, dydt=a.velocity, aux={"loss": a.loss, "grad": a.grad, "f": a.f})

    def gradient_norm(self, y: torch.Tensor, dydt: torch.Tensor) -> float:
        """||grad L(w)|| (dw/dt is not minus the gradient at the edge)."""
        return float(self.analysis(y).grad.norm())

    # The hybrid system: events and mode switches.

    def _above_edge(self, t: float, y: torch.Tensor) -> float:
        """lambda_(k+1)(w) / (2/eta) - 1: reaches 0 from below when one more eigenvalue reaches the edge."""
        k = self.critical
        values = self._spectrum(y, k + 1, EVENT_TOL).values
        return float(values[k]) / self.edge - 1 if k < len(values) else -1.0

    def _holding(self, t: float, y: torch.Tensor) -> float:
        """The smallest eigenvalue of the X that holds all k critical eigenvalues at the edge,
        over its largest |eigenvalue|: reaches 0 from above when the flow leaves the edge."""
        a = self.analysis(y)
        values = np.linalg.eigvalsh(complementarity.equality_solution(a.gram, a.beta))
        return float(values[0] / max(np.abs(values).max(), 1e-300))

    def crossings(self) -> list[Crossing]:
        """The events of the current mode: another eigenvalue reaching the edge, and (at the
        edge) the flow leaving it."""
        events = []
        if self.critical < MAX_CRITICAL and self.critical + 1 < self.n_params:
            events.append(Crossing(self._above_edge, "an eigenvalue reached 2/lr", direction=+1))
        if self.critical > 0:
            events.append(Crossing(self._holding, "the flow left the edge", direction=-1))
        return events

    def cross(self, stop: Stop, y: torch.Tensor) -> None:
        """Switch the mode at an event located by the integrator at state ``y``. Entering:
        the eigenvector that reached the edge (the first one after the critical ones) joins
        them. Leaving: the critical basis is rotated so that the direction the flow leaves
        along (X's null vector at the event) comes last, and is let go."""
        if stop.reason.startswith("an eigenvalue"):
            self.critical += 1
            return
        k = self.critical
        a = self.analysis(y)
        rotation = np.linalg.eigh(complementarity.equality_solution(a.gram, a.beta))[1][:, ::-1]
        held = np.asarray(a.spectrum.vectors[:, :k]) @ rotation
        self._vectors = np.concatenate([held, self._vectors[:, k:]], axis=1)
        self.critical -= 1

    def settle(self, y: torch.Tensor) -> None:
        """The mode of a state an integration starts from: the eigenvalues within EDGE_TOL of
        2/eta are critical, less those the flow is leaving (X would be negative)."""
        count = 2
        while True:  # as many eigenvalues as it takes to find one below the edge (ARPACK: from afar)
            spectrum = top_eigenvalues(self, self.weights(y), count, 1e-10, self._vectors)
            self.products["hvp"] += spectrum.products
            self._vectors, values = spectrum.vectors, spectrum.values
            k = int(np.sum(values >= self.edge * (1 - EDGE_TOL)))
            if k < len(values) or count > MAX_CRITICAL or count >= self.n_params - 1:
                break
            count *= 2
        self.critical = min(k, MAX_CRITICAL)
        while self.critical > 0 and self._holding(0.0, y) < 0:
            self.critical -= 1
