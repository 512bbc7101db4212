"""Steppers: advance a state by dt given the evaluation at the start of the step."""

from __future__ import annotations

import math
from typing import Protocol

import torch

from .problem import CountingProblem, Evaluation


class Stepper(Protocol):
    """``step(ev, dt, problem) -> y(t + dt)`` from the evaluation ``ev`` at the start of
    the step; a multi-stage stepper evaluates ``problem`` inside the step (counted)."""

    order: int

    def step(self, ev: Evaluation, dt: float, problem: CountingProblem | None = None) -> torch.Tensor: ...


class Euler:
    """Explicit Euler, order 1: y(t + dt) = y + dt * dy/dt.

    For gradient flow dw/dt = -grad L(w) this is gradient descent with learning rate dt,
    the stepper of Geiger et al. (seed 001) under the gradient-ratio controller.
    """

    order = 1

    def step(self, ev: Evaluation, dt: float, problem: CountingProblem | None = None) -> torch.Tensor:
        return torch.add(ev.y, ev.dydt, alpha=dt)  # one pass, where y + dt * dydt takes two


class HeavyBall:
    """Polyak's heavy-ball method (1964) on a state y = (x, v) stacked like
    :class:`ExactMomentum`'s, v the velocity per unit time:

        v' = beta v - g(x),     x' = x + dt v'

    i.e. with the displacement u = dt v the textbook update u' = beta u - dt g,
    x' = x + u': gradient descent with learning rate dt and momentum beta, t advancing by
    dt per iteration. beta = 0 is gradient descent. The force g is read from the
    evaluation's auxiliary value ``force_key``.
    """

    order = 1

    def __init__(self, beta: float, force_key: str = "grad") -> None:
        if not 0 <= beta < 1:
            raise ValueError(f"beta = {beta!r}: the heavy-ball momentum must be in [0, 1)")
        self.beta = beta
        self.force_key = force_key

    def step(self, ev: Evaluation, dt: float, problem: CountingProblem | None = None) -> torch.Tensor:
        x, v = ev.y.chunk(2)
        v_new = self.beta * v - ev.value(self.force_key)
        return torch.cat([x + dt * v_new, v_new])


class ExactMomentum:
    """The momentum system integrated exactly over a step for a frozen force g.

    State y = (x, v) stacked in one flat tensor (x first, then v, equal halves) for

        dv/dt = -(v + g(x)) / tau,     dx/dt = v.

    Holding g fixed over the step, v relaxes exponentially towards -g:

        v' = e^{-dt/tau} v - (1 - e^{-dt/tau}) g,      x' = x + dt v'

    which is the update of the original implementation (mariogeiger/gradientflow,
    ``_ContinuousMomentum``; seed 001, "momentum dynamics"). It is first order in dt and
    stable for any dt/tau. The force g is read from the evaluation's auxiliary value
    ``force_key`` (the loss gradient for a network).
    """

    order = 1

    def __init__(self, tau: float, force_key: str = "grad") -> None:
        if not tau > 0:
            raise ValueError(f"tau = {tau!r}: the momentum time scale must be > 0")
        self.tau = tau
        self.force_key = force_key

    def step(self, ev: Evaluation, dt: float, problem: CountingProblem | None = None) -> torch.Tensor:
        g = ev.value(self.force_key)
        x, v = ev.y.chunk(2)
        decay = math.exp(-dt / self.tau)
        v_new = decay * v - (1.0 - decay) * g
        return torch.cat([x + dt * v_new, v_new])
