"""torchode's explicit Runge-Kutta methods with its PID step-size controller, behind the
method contract: the modern explicit anchor (Lienen and Guennemann, "torchode: A Parallel
ODE Solver for PyTorch", 2022).

torchode solves batches of problems in one loop (``AutoDiffAdjoint.solve``); gflow drives
the same loop one step at a time, through torchode's own step method (``Tsit5``,
``Dopri5``), controller (``PIDController``) and dense output (``build_interpolation``), so
that observers see every accepted step and saves never cut a step. ``pip install
gflow[stiff]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dense import Interpolant, hermite_pair
from .events import Stop
from .method import OnStep, Segment
from .problem import CountingProblem, Evaluation

METHODS = ("tsit5", "dopri5")


def _torchode():
    try:
        import torchode
    except ImportError:
        raise ImportError("the torchode methods need torchode: pip install 'gflow[stiff]'") from None
    return torchode


class _Term:
    """The vector field on a batch of one; evaluations kept by the identity of the state, so
    that the accepted state (the FSAL stage) is not evaluated twice."""

    def __init__(self, problem: CountingProblem) -> None:
        self.problem = problem
        self.cache: list[tuple[torch.Tensor, Evaluation]] = []

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.evaluation(float(t.reshape(-1)[0]), y).dydt[None]

    def evaluation(self, t: float, y: torch.Tensor) -> Evaluation:
        for key, ev in reversed(self.cache):
            if key is y:
                return ev if ev.t == t else Evaluation(t, ev.y, ev.dydt, ev.aux)
        ev = self.problem.evaluate(t, y[0])
        self.cache = self.cache[-15:] + [(y, ev)]
        return ev


@dataclass(frozen=True)
class TorchODE:
    """torchode's ``tsit5`` (Tsitouras 5(4), the default of torchode and diffrax) or
    ``dopri5`` under its PID controller, with the coefficients of torchode's documentation
    (pcoeff 0.2, icoeff 0.5, dcoeff 0): err = RMS of e_i / (atol + rtol max(|y_i|, |y'_i|))."""

    name: str = "tsit5"
    rtol: float = 1e-6
    atol: float = 1e-9
    interpolates: bool = True

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"torchode method {self.name!r}: must be one of {', '.join(METHODS)}")
        if not (self.rtol > 0 and self.atol >= 0):
            raise ValueError(f"rtol = {self.rtol!r}, atol = {self.atol!r}: need rtol > 0 and atol >= 0")

    def advance(
        self, problem: CountingProblem, ev: Evaluation, t_stop: float, dt: float | None, on_step: OnStep
    ) -> Segment:
        to = _torchode()
        field = _Term(problem)
        field.cache = [(ev.y[None], ev)]
        term = to.ODETerm(field, with_stats=False)
        method = {"tsit5": to.Tsit5, "dopri5": to.Dopri5}[self.name](term=term)
        controller = to.PIDController(atol=self.atol, rtol=self.rtol, pcoeff=0.2, icoeff=0.5, dcoeff=0.0, term=term)
        like = torch.tensor([ev.t], dtype=torch.float64, device=ev.y.device)
        y = field.cache[0][0]
        ivp = to.InitialValueProblem(y0=y, t_start=like, t_end=torch.full_like(like, t_stop))
        dt0 = None if dt is None else torch.full_like(like, dt)
        stats: dict = {}
        step, ctrl, f0 = controller.init(term, ivp, method.convergence_order(), dt0, stats=stats, args=None)
        state = method.init(term, ivp, f0, stats=stats, args=None)
        t, running, previous, rejected = like, torch.ones(1, dtype=torch.bool, device=like.device), ev, 0
        step = torch.clamp(step, max=t_stop - t)
        while previous.t < t_stop:
            result, interp, state_next, _ = method.step(term, running, y, t, step, state, stats=stats, args=None)
            accept, step_next, ctrl_next, status = controller.adapt_step_size(t, step, y, result, ctrl, stats)
            if not torch.isfinite(result.y).all():
                accept = torch.zeros_like(accept)
            if bool(accept):
                t, y, state = t + step, result.y, method.merge_states(accept, state_next, state)
                t1 = t_stop if float(t) >= t_stop else float(t)
                new = field.evaluation(t1, y)
                dense = _interpolant(method.build_interpolation(interp), previous, new)
                stop = on_step(new, t1 - previous.t, rejected, {}, dense, float(step_next))
                previous, rejected = new, 0
                if stop:
                    return Segment(new, float(step_next), stop)
            else:
                rejected += 1
            if status is not None and int(status) != 0 or not float(step_next) > 1e-14 * max(1.0, abs(float(t))):
                return Segment(previous, None, Stop("failed", f"torchode {self.name}: step size collapsed at "
                                                              f"t = {previous.t:.6g}"))
            step, ctrl = torch.clamp(step_next, max=t_stop - t), ctrl_next
        return Segment(previous, float(step), None)


def _interpolant(interpolation: object, before: Evaluation, after: Evaluation) -> Interpolant:
    """torchode's dense output of the step (its fourth-order polynomial for Tsit5) for y; the
    derivative from cubic Hermite between the ends (torchode has none)."""

    def at(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        times = torch.tensor([[t]], dtype=torch.float64, device=before.y.device)
        y = interpolation.evaluate(times, torch.zeros(1, dtype=torch.long, device=before.y.device))[0, 0]
        return y, hermite_pair(t, before.t, before.y, before.dydt, after.t, after.y, after.dydt)[1]

    return at
