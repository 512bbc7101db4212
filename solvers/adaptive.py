"""The native method: one stepper driven by one step-size controller."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .controllers import Controller, FixedStep
from .events import Stop, non_finite, step_collapsed
from .method import OnStep, Segment
from .problem import CountingProblem, Evaluation, State
from .steppers import Stepper


@dataclass(frozen=True)
class Adaptive:
    """Take tentative steps with ``stepper``; let ``controller`` accept them or not.

    Every evaluation is used once: an accepted tentative evaluation is the next step's
    starting evaluation, so an accepted step costs one evaluation. A controller that
    decides from y_{n+1} alone (``needs_end_evaluation`` False: an embedded error
    estimate) decides before the evaluation, so a rejected step costs none; otherwise a
    rejected step costs one more. A tentative step whose evaluation (or, deciding first,
    whose measured error) is not finite is retried tenfold shorter, ``max_blowups`` times.
    Steps are shortened to land exactly on ``t_stop`` without changing the
    controller's dt, as in the original implementation. With ``interpolates``, save times
    are served from each step's dense output instead (the stepper's own ``interpolant``
    where it has one, cubic Hermite otherwise), so only t_end shortens a step. A step size
    below ``dt_min`` (relative to max(1, |t|)) fails the integration instead of crawling
    forever.
    """

    stepper: Stepper
    controller: Controller
    dt0: float = 1.0
    dt_min: float = 1e-13
    interpolates: bool = False
    max_blowups: int = 4

    def __post_init__(self) -> None:
        if not self.dt0 > 0:
            raise ValueError(f"dt0 = {self.dt0!r}: the first step must be > 0")

    def advance(
        self, problem: CountingProblem, ev: Evaluation, t_stop: float, dt: float | None, on_step: OnStep
    ) -> Segment:
        dt = self.dt0 if dt is None else dt
        fixed = isinstance(self.controller, FixedStep)
        decides_first = not getattr(self.controller, "needs_end_evaluation", True)
        while ev.t < t_stop:
            rejected = blowups = 0
            while True:
                remaining = t_stop - ev.t
                # Land on t_stop when the step would stop a rounding error short of it. A
                # fixed step keeps its own size there (t_stop - t differs from it by rounding):
                # gradient descent's iterates stay those of lr, not of lr give or take an ulp.
                h = remaining if dt >= remaining * (1 - 1e-10) else dt
                lands = h == remaining
                if fixed and abs(dt - remaining) <= 1e-10 * remaining:
                    h, lands = dt, True
                collapsed = step_collapsed(ev.t, h, self.dt_min)
                if collapsed:
                    return Segment(ev, dt, collapsed)
                t_new = t_stop if lands else ev.t + h
                y_new = self.stepper.step(ev, h, problem)
                # A controller deciding from y_{n+1} alone decides first: a rejected step is not evaluated.
                decision = self.controller.adapt(ev, State(t_new, y_new), h, dt) if decides_first else None
                if decision is not None and not all(math.isfinite(r) for r in decision.ratios.values()):
                    failure = Stop("failed", f"non-finite error estimate at t = {t_new:.6g}")
                elif decision is not None and not decision.accept:
                    failure = None
                else:
                    new = problem.evaluate(t_new, y_new)
                    failure = non_finite(new)
                if failure:  # too long a step can overflow: retried shorter, a few times
                    blowups += 1
                    if blowups > self.max_blowups:
                        return Segment(ev, dt, Stop("failed", f"{failure.reason} (tentative step dt = {h:.3g}, "
                                                              f"after {self.max_blowups} tenfold shorter tries)"))
                    dt = h / 10
                    rejected += 1
                    continue
                if decision is None:
                    decision = self.controller.adapt(ev, new, h, dt)
                dt = decision.dt_next
                if decision.accept:
                    break
                rejected += 1
            dense = getattr(self.stepper, "interpolant", None) if self.interpolates else None
            interpolant = dense(ev, new, h) if dense else None
            ev = new
            # A stepper may report what its step measured for free (exponential: a Ritz value).
            diagnostics = getattr(self.stepper, "diagnostics", None)
            ratios = decision.ratios | diagnostics() if diagnostics else decision.ratios
            stop = on_step(ev, h, rejected, ratios, interpolant, dt)
            del interpolant  # its step's dense output (a Krylov space) is not kept through the next step
            if stop:
                return Segment(ev, dt, stop)
        return Segment(ev, dt, None)
