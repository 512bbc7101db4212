"""torchdiffeq's methods behind the same contract as the native method.

Each save interval is one ``torchdiffeq.odeint`` call from the interval's start to its end,
so memory holds a bounded number of states however long the run. Adaptive methods land
exactly on the interval's end (``step_t``) and start the next interval with the last step
size they tried (``first_step``), so no interval restarts its step-size search.
Accepted and rejected steps are observed through torchdiffeq's step callbacks.

Costs are counted honestly: every call of the vector field that is not a repeat of an
evaluation already made at the same state is an evaluation. The observers need the
evaluation at each accepted state; FSAL methods (dopri5, dopri8, bosh3, fehlberg2) and the
fixed-grid methods make it anyway, adaptive_heun does not and pays one more per step; the
state at each interval's end is evaluated once (it starts the next interval for free).
A method that reports its own result unreliable (implicit_adams' functional iteration not
converging) fails the integration instead of finishing it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torchdiffeq

# torchdiffeq's solver classes and input checks, to drive its adaptive solvers step by step
# with their dense output (``odeint`` hides both); pinned to torchdiffeq 0.2.x in pyproject.
from torchdiffeq._impl.misc import _check_inputs
from torchdiffeq._impl.odeint import SOLVERS as _SOLVERS

from .dense import Interpolant
from .events import Stop
from .method import OnStep, Segment
from .problem import CountingProblem, Evaluation
from .torchdiffeq_methods import ADAPTIVE, FIXED, METHODS  # noqa: F401 (re-exported)


class _Abort(Exception):
    def __init__(self, stop: Stop, ev: Evaluation) -> None:
        self.stop, self.ev = stop, ev


class _Field(torch.nn.Module):
    """The vector field torchdiffeq integrates, with its step callbacks.

    Evaluations are cached by the identity of the state tensor: torchdiffeq passes the very
    tensor it keeps as the accepted state, so a repeated call at that state is free.
    """

    def __init__(self, problem: CountingProblem, start: Evaluation, on_step: OnStep) -> None:
        super().__init__()
        self.problem = problem
        self.on_step = on_step
        self.cache: list[Evaluation] = [start]
        self.t_accepted = start.t
        self.rejected = 0
        self.last_dt: float | None = None
        self.callbacks = True  # off when the caller watches the solver's state itself

    def lookup(self, y: torch.Tensor) -> Evaluation | None:
        return next((ev for ev in reversed(self.cache) if ev.y is y), None)

    def evaluation(self, t: float, y: torch.Tensor) -> Evaluation:
        ev = self.lookup(y)
        if ev is None:
            ev = self.problem.evaluate(t, y)
            self.cache = self.cache[-15:] + [ev]
        return ev

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.evaluation(float(t), y).dydt

    def accepted(self, t: float, y: torch.Tensor) -> None:
        """The state (t, y) has been accepted: report the step that reached it."""
        ev = self.evaluation(t, y)
        if ev.t != t:  # an FSAL stage evaluated a hair before t (torchdiffeq's perturbation)
            ev = Evaluation(t, ev.y, ev.dydt, ev.aux)
        h, self.t_accepted = t - self.t_accepted, t
        rejected, self.rejected = self.rejected, 0
        stop = self.on_step(ev, h, rejected, {}, None, self.last_dt)
        if stop:
            raise _Abort(stop, ev)

    def callback_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        self.last_dt = float(dt)
        if self.callbacks and float(t0) > self.t_accepted:
            self.accepted(float(t0), y0)

    def callback_reject_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
        if self.callbacks:
            self.rejected += 1


@dataclass(frozen=True)
class TorchDiffEq:
    """A torchdiffeq method: adaptive (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun) with
    ``rtol``/``atol``; or fixed-grid (euler, midpoint, rk4, implicit_adams) with ``step_size``.
    With ``interpolates``, one ``odeint`` runs to t_end and save times are served by cubic
    Hermite interpolation between accepted states (see :mod:`solvers.dense`).

    torchdiffeq's ``explicit_adams`` is left out: in torchdiffeq 0.2.5 it diverges on
    dy/dt = -2y with step 0.01 (error 1e25 at t = 2), its implicit twin is fine."""

    name: str
    rtol: float = 1e-7
    atol: float = 1e-9
    step_size: float | None = None
    interpolates: bool = False

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise ValueError(f"method {self.name!r}: must be one of {', '.join(METHODS)}")
        if self.name in FIXED and not (self.step_size and self.step_size > 0):
            raise ValueError(f"method {self.name!r} is fixed-step: give a step size dt > 0")
        if not (self.rtol > 0 and self.atol >= 0):
            raise ValueError(f"rtol = {self.rtol!r}, atol = {self.atol!r}: need rtol > 0 and atol >= 0")

    def _odeint_args(self, t_stop: torch.Tensor, dt: float | None) -> dict:
        if self.name in FIXED:
            return {"method": self.name, "options": {"step_size": self.step_size}}
        options: dict = {"step_t": t_stop.reshape(1)}
        if dt is not None and math.isfinite(dt) and dt > 0:
            options["first_step"] = dt
        return {"method": self.name, "options": options}

    def advance(
        self, problem: CountingProblem, ev: Evaluation, t_stop: float, dt: float | None, on_step: OnStep
    ) -> Segment:
        field = _Field(problem, ev, on_step)
        if self.interpolates and self.name in ADAPTIVE:
            return self._advance_dense(field, ev, t_stop, dt)
        times = torch.tensor([ev.t, t_stop], dtype=torch.float64, device=ev.y.device)
        try:
            with warnings.catch_warnings():
                # Fixed-grid methods have fewer callbacks; that is handled above.
                warnings.filterwarnings("ignore", message="Solver .* does not support callbacks")
                warnings.filterwarnings("ignore", message="The following arguments have no effect")
                # implicit_adams warns and goes on when its corrector does not converge: stop there.
                warnings.filterwarnings("error", message="Functional iteration did not converge")
                y_end = torchdiffeq.odeint(field, ev.y, times, rtol=self.rtol, atol=self.atol,
                                           **self._odeint_args(times[1], dt))[-1]
            # The end state is often the last stage's state, bitwise: reuse that evaluation.
            same = next((e for e in reversed(field.cache) if torch.equal(e.y, y_end)), None)
            field.accepted(t_stop, same.y if same is not None else y_end)
        except _Abort as abort:
            return Segment(abort.ev, field.last_dt or dt, abort.stop)
        except AssertionError as e:  # torchdiffeq's own checks: underflow in dt, non-finite state
            return Segment(field.cache[-1], dt, Stop("failed", f"{self.name}: {e}"))
        except UserWarning as e:  # the method's own warning that its result is unreliable
            return Segment(field.cache[-1], dt, Stop("failed", f"{self.name}: {str(e).rstrip('.')} after "
                                                     f"t = {field.t_accepted:.6g}: take a smaller step (--dt)"))
        return Segment(field.cache[-1] if same is None else same, field.last_dt or dt, None)

    def _advance_dense(self, field: _Field, ev: Evaluation, t_stop: float, dt: float | None) -> Segment:
        """Drive torchdiffeq's adaptive Runge-Kutta solver step by step (as its own ``odeint``
        loop does) to t_stop, handing each accepted step to the entry point with the
        method's own dense output: the polynomial torchdiffeq fits to the step's stages
        (fourth order for dopri5, seventh for dopri8), not a cubic through its ends."""
        times = torch.tensor([ev.t, t_stop], dtype=torch.float64, device=ev.y.device)
        options = self._odeint_args(times[1], dt)["options"]
        field.callbacks = False  # acceptance is seen here, from the solver's state
        _, func, y0, t, rtol, atol, method, options, _, _ = _check_inputs(
            field, ev.y, times, self.rtol, self.atol, self.name, options, None, _SOLVERS)
        solver = _SOLVERS[method](func=func, y0=y0, rtol=rtol, atol=atol, **options)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="The following arguments have no effect")
                solver._before_integrate(t)
                state = solver.rk_state
                while float(state.t1) < t_stop:
                    new = solver._adaptive_step(state)
                    if float(new.t1) == float(state.t1):  # rejected
                        field.rejected += 1
                        state = new
                        continue
                    state = new
                    t1 = t_stop if float(state.t1) >= t_stop else float(state.t1)
                    step_ev = field.evaluation(t1, state.y1)
                    if step_ev.t != t1:
                        step_ev = Evaluation(t1, step_ev.y, step_ev.dydt, step_ev.aux)
                    rejected, field.rejected = field.rejected, 0
                    stop = field.on_step(step_ev, t1 - float(state.t0), rejected, {}, _polynomial(state),
                                         float(state.dt))
                    field.cache = [step_ev]
                    if stop:
                        return Segment(step_ev, float(state.dt), stop)
        except AssertionError as e:  # torchdiffeq's own checks: underflow in dt, non-finite state
            return Segment(field.cache[-1], dt, Stop("failed", f"{self.name}: {e}"))
        return Segment(field.cache[-1], float(state.dt), None)


def _polynomial(state: object) -> Interpolant:
    """torchdiffeq's dense output of the step held by a Runge-Kutta state: the polynomial
    sum_i c_i x^i in x = (t - t0) / (t1 - t0), and its derivative in t."""
    coefficients, t0, t1 = state.interp_coeff, float(state.t0), float(state.t1)

    def at(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = (t - t0) / (t1 - t0)
        y = sum(c * x**i for i, c in enumerate(coefficients))
        dy = sum(c * (i * x ** (i - 1)) for i, c in enumerate(coefficients) if i) / (t1 - t0)
        return y, dy

    return at
