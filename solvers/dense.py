"""Dense output between stored states."""

from __future__ import annotations

import torch


def hermite(
    t: float, t0: float, y0: torch.Tensor, f0: torch.Tensor, t1: float, y1: torch.Tensor, f1: torch.Tensor
) -> torch.Tensor:
    """Cubic Hermite interpolation of y(t) on [t0, t1] from the end values and derivatives.

    With h = t1 - t0 and s = (t - t0) / h,

        y(t) ~ (1 + 2s)(1 - s)^2 y0 + s (1 - s)^2 h f0 + s^2 (3 - 2s) y1 + s^2 (s - 1) h f1,

    exact for cubics, with error at most h^4 max|y''''| / 384 (Hairer, Norsett, Wanner,
    *Solving ODEs I*, II.6): fourth order in the spacing of the stored states.
    """
    h = t1 - t0
    if h <= 0:
        raise ValueError(f"interval [{t0}, {t1}] is empty")
    s = (t - t0) / h
    return ((1 + 2 * s) * (1 - s) ** 2) * y0 + (s * (1 - s) ** 2 * h) * f0 + (s * s * (3 - 2 * s)) * y1 + (
        s * s * (s - 1) * h
    ) * f1
