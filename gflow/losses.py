"""Per-sample losses l(a, y) on the scaled output a = alpha (f - f0), labels y = +-1.

The training loss is the one of Geiger et al. (seeds 000, 001):

    L(w) = 1 / (alpha^2 n) * sum_mu l(alpha (f(w, x_mu) - f(w0, x_mu)), y_mu)

(with f0 = 0 when centring is switched off); the alpha^2 makes the lazy-limit dynamics
converge in a time independent of alpha.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_hinge(beta: float) -> Loss:
    """l(a, y) = softplus(beta (1 - y a)) / beta: a smooth hinge with margin 1 (the
    paper's default, beta = 20); tends to the hinge as beta -> inf."""

    def loss(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(beta * (1 - y * a)) / beta

    return loss


def hinge(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """l(a, y) = max(0, 1 - y a)."""
    return torch.relu(1 - y * a)


def quadratic_hinge(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """l(a, y) = max(0, 1 - y a)^2 / 2."""
    return torch.relu(1 - y * a).pow(2) / 2


def mse(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """l(a, y) = (a - y)^2 / 2."""
    return (a - y).pow(2) / 2


def get_loss(name: str, beta: float = 20.0) -> Loss:
    losses: dict[str, Loss] = {"softhinge": soft_hinge(beta), "hinge": hinge, "qhinge": quadratic_hinge, "mse": mse}
    return losses[name]


def classification_error(a: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples whose prediction sign(a) disagrees with y (a = 0 counts wrong)."""
    if y.numel() == 0:
        return float("nan")
    return float((a * y <= 0).double().mean())
