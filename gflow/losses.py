"""Per-sample losses l(a, y) on the scaled output a = alpha (f - f0).

The training loss is the one of Geiger et al. (seeds 000, 001):

    L(w) = 1 / (alpha^2 n) * sum_mu l(alpha (f(w, x_mu) - f(w0, x_mu)), y_mu)

(with f0 = 0 when centring is switched off); the alpha^2 makes the lazy-limit dynamics
converge in a time independent of alpha.

Two kinds of task. One output (a of shape (n,)): labels y = +-1 for the hinge losses and
cross-entropy, any real y for mse. k outputs (a of shape (n, k)): integer labels
y in 0..k-1, for cross-entropy and mse (on one-hot targets). A user's loss is any
callable ``loss(a, y) -> per-sample losses`` of shape (n,).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .errors import ConfigError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _square_exp_overflow(dtype: torch.dtype) -> float:
    """A bound below log(largest float of ``dtype``) / 2: e^(2x) is finite for x under it."""
    return math.log(torch.finfo(dtype).max) / 2 - 1.0


def soft_hinge(beta: float) -> Loss:
    """l(a, y) = softplus(beta (1 - y a)) / beta: a smooth hinge with margin 1 (the
    paper's default, beta = 20); tends to the hinge as beta -> inf.

    softplus as log(1 + e^x) = logaddexp(0, x), smooth everywhere: torch's ``softplus``
    returns x itself above its threshold x = 20, a jump of ~2e-9 in value and slope that
    sits exactly at initialisation for beta = 20 (a = 0 gives x = beta), where it made the
    forward-difference Jacobian products of the exponential method 4% wrong (measured on
    digits, 40 points, h = 10: v^T J v 0.00898 against 0.00933 exact).

    x is floored at -(log(largest float) / 2 - 1) (-43.4 in float32, -353.9 in float64),
    where the loss is below 1e-19 or 1e-153: logaddexp's derivative 1 / (1 + e^-x),
    differentiated again (Hessian-vector products) or twice (the central flow), forms
    e^-x and e^-2x, and inf / inf = NaN once they overflow, which a float32 run reached at
    margins y a > 5.4 (second derivative) and 5.1 (third). Above the floor the values and
    derivatives are logaddexp's, bit for bit."""

    def loss(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = beta * (1 - y * a)
        x = x.clamp(min=-_square_exp_overflow(x.dtype))
        return torch.logaddexp(torch.zeros_like(x), x) / beta

    return loss


def hinge(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """l(a, y) = max(0, 1 - y a)."""
    return torch.relu(1 - y * a)


def quadratic_hinge(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """l(a, y) = max(0, 1 - y a)^2 / 2."""
    return torch.relu(1 - y * a).pow(2) / 2


def mse(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One output: l(a, y) = (a - y)^2 / 2. k outputs, integer label y:
    l(a, y) = ||a - e_y||^2 / 2 = (||a||^2 - 2 a_y + 1) / 2 (one-hot target, never formed)."""
    if a.dim() <= 1:
        return (a - y).pow(2) / 2
    return (a.pow(2).sum(-1) - 2 * a.gather(-1, y[:, None]).squeeze(-1) + 1) / 2


def cross_entropy(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k outputs, integer label y: l(a, y) = log sum_c e^{a_c} - a_y (softmax cross-entropy).
    One output, y = +-1: the logistic loss l(a, y) = log(1 + e^{-y a}), its two-class case."""
    if a.dim() <= 1:
        return torch.nn.functional.softplus(-y * a)
    return torch.logsumexp(a, -1) - a.gather(-1, y[:, None]).squeeze(-1)


BINARY = ("softhinge", "hinge", "qhinge")


def get_loss(name: str, beta: float = 20.0) -> Loss:
    losses: dict[str, Loss] = {"softhinge": soft_hinge(beta), "hinge": hinge, "qhinge": quadratic_hinge,
                               "mse": mse, "cross-entropy": cross_entropy}
    return losses[name]


def check_task(name: str | None, outputs: int, y: torch.Tensor, split: str) -> None:
    """Raise ConfigError when labels ``y`` do not suit a built-in loss ``name`` (None: the
    user's own loss, which takes any labels) on a network with ``outputs`` outputs."""
    if name is None or not len(y):
        return
    if outputs > 1:
        if name in BINARY:
            raise ConfigError("loss", name, f"is a two-class loss for one output with labels +-1, but the network "
                              f"has {outputs} outputs: use cross-entropy, mse or your own loss")
        if y.dtype.is_floating_point or y.dim() != 1 or int(y.min()) < 0 or int(y.max()) >= outputs:
            raise ConfigError("loss", name, f"with {outputs} outputs needs integer labels 0..{outputs - 1} of shape (n,); "
                              f"the {split} labels are {_describe(y)}")
        return
    if y.dim() != 1:
        raise ConfigError("loss", name, f"with one output needs labels of shape (n,); the {split} labels have "
                          f"shape {tuple(y.shape)}")
    if name != "mse" and not bool(((y == 1) | (y == -1)).all()):
        raise ConfigError("loss", name, f"with one output needs labels +-1; the {split} labels are {_describe(y)} "
                          "(for k classes give the network k outputs)")


def _describe(y: torch.Tensor) -> str:
    values = torch.unique(y.detach().cpu())
    shown = ", ".join(f"{float(v):g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return f"of shape {tuple(y.shape)} and {y.dtype} with values {{{shown}}}"


def classification_error(a: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples classified wrong; NaN when the labels are not classes.

    One output, y = +-1: wrong when y a <= 0. k outputs, integer y: wrong unless a_y is
    strictly the largest output. Both rules count a tie as wrong, so at t = 0 of a centred
    run (a = 0 for every sample) the error is exactly 1: "not yet decided", not chance level.
    """
    if y.numel() == 0:
        return float("nan")
    if a.dim() <= 1:
        if y.dim() != 1 or not bool(((y == 1) | (y == -1)).all()):
            return float("nan")
        return float((a * y <= 0).double().mean())
    if y.dtype.is_floating_point or y.dim() != 1:
        return float("nan")
    ay = a.gather(-1, y[:, None])
    others = a.scatter(-1, y[:, None], float("-inf"))
    return float((others.max(-1).values >= ay.squeeze(-1)).double().mean())


def margins(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample margins: y a for one output with labels +-1; a_y - max_{c != y} a_c for k
    outputs with integer labels (positive iff classified right, by that much)."""
    if a.dim() <= 1:
        return y * a
    others = a.scatter(-1, y[:, None], float("-inf"))
    return a.gather(-1, y[:, None]).squeeze(-1) - others.max(-1).values
