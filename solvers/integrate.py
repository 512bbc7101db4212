"""The single entry point: ``integrate(problem, y0, (t0, t_end), method, ...)``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .blas import one_blas_thread
from .dense import Interpolant, hermite_step
from .events import Crossing, Event, Progress, Stop, non_finite
from .method import Method
from .observers import Observer, SaveRecord, StepRecord
from .problem import CountingProblem, Evaluation, Problem


@dataclass(frozen=True)
class Counters:
    """Where an earlier integration left off, so a resumed one continues its counts.
    ``observed``: evaluations made only to show observers an accepted state the method never
    evaluates (CVODE's corrected state), not part of ``evals``, the method's cost."""

    steps: int = 0
    evals: int = 0
    wall: float = 0.0
    saves: int = 0
    observed: int = 0


@dataclass(frozen=True)
class Solution:
    """ev: the evaluation at the final state; stop: why it ended; dt: the step size the
    method would take next (store it to resume); counters: totals at the end."""

    ev: Evaluation
    stop: Stop
    dt: float | None
    counters: Counters

    @property
    def t(self) -> float:
        return self.ev.t

    @property
    def y(self) -> torch.Tensor:
        return self.ev.y


def _check_save_times(save_at: Sequence[float], t0: float, t_end: float) -> list[float]:
    times = [float(t) for t in save_at]
    if any(b <= a for a, b in zip(times, times[1:])):
        raise ValueError("save times must be strictly increasing")
    if times and (times[0] < t0 or times[-1] > t_end):
        raise ValueError(f"save times must lie within [t0, t_end] = [{t0:g}, {t_end:g}]")
    return times


def integrate(
    problem: Problem,
    y0: torch.Tensor,
    t_span: tuple[float, float],
    method: Method,
    *,
    save_at: Sequence[float] = (),
    observers: Iterable[Observer] = (),
    events: Iterable[Event] = (),
    dt: float | None = None,
    counters: Counters = Counters(),
) -> Solution:
    """Integrate ``problem`` from ``y0`` at t0 to t_end with ``method``.

    Save times are reported to every observer's ``on_save``: from the step's interpolant
    when the method ``interpolates`` (its steps are never shortened by a save), otherwise
    hit exactly (a step is shortened to land on each). The final state is saved too when it
    is not a save time. Every accepted step goes to ``on_step``. After each accepted step
    the evaluation is checked for NaN/inf (status ``failed``), its saves are reported, and
    then each event is checked; the first to fire ends the integration. A
    :class:`~solvers.events.Crossing` among the events is checked first and located inside
    the step: the integration then ends at the crossing (status ``event``, the final state
    from the step's dense output, the step itself not reported to ``on_step`` nor saved at
    its end), and the caller may go on from ``Solution.ev``. ``dt`` overrides
    the method's first step; ``counters`` continue the counts of an earlier integration
    that is being resumed.
    """
    t0, t_end = float(t_span[0]), float(t_span[1])
    if not t_end > t0:
        raise ValueError(f"t_end = {t_end:g} must be > t0 = {t0:g}")
    saves = _check_save_times(save_at, t0, t_end)
    observers, events = list(observers), list(events)
    crossings = [e for e in events if isinstance(e, Crossing)]
    events = [e for e in events if not isinstance(e, Crossing)]
    counting = CountingProblem(problem, counters.evals)
    counting.observed = counters.observed
    start = time.perf_counter() - counters.wall
    steps, n_saved = counters.steps, counters.saves
    interpolating = bool(getattr(method, "interpolates", False))

    def wall() -> float:
        return time.perf_counter() - start

    def save(t: float, y: torch.Tensor, dydt: torch.Tensor, ev: Evaluation | None, last: Evaluation,
             dt_next: float | None, closes: bool = True) -> None:
        nonlocal n_saved, saved_at
        record = SaveRecord(t, y, dydt, ev, last, n_saved, steps, counting.count, wall(), dt_next, closes)
        for obs in observers:
            obs.on_save(record)
        n_saved += 1
        saved_at = t

    def locate(ev: Evaluation, step: Interpolant, dt_next: float | None) -> Stop | None:
        """End at the earliest crossing inside the step (its saves up to there served)."""
        nonlocal previous, located, values
        now = [c.g(ev.t, ev.y) for c in crossings]
        hits = sorted((c.locate(step, previous.t, before, ev.t, after), i) for i, (c, before, after)
                      in enumerate(zip(crossings, values, now)) if c.crossed(before, after))
        values = now
        if not hits:
            return None
        t, i = hits[0]
        y, dydt = step(t)
        located = Evaluation(t=t, y=y, dydt=dydt)
        due = [s for s in pending if s <= t]
        del pending[: len(due)]
        for k, s in enumerate(due):
            y_s, dydt_s = (y, dydt) if s == t else step(s)
            save(s, y_s, dydt_s, None, located, dt_next, closes=k == len(due) - 1)
        return Stop("event", f"{crossings[i].name} at t = {t:.10g}")

    def on_step(ev: Evaluation, h: float, rejected: int, ratios: dict[str, float],
                interpolant: Interpolant | None = None, dt_next: float | None = None) -> Stop | None:
        nonlocal steps, previous
        if crossings and ev.finite:
            crossed = locate(ev, interpolant or hermite_step(previous, ev), dt_next)
            if crossed:
                return crossed
        steps += 1
        record = StepRecord(ev, h, steps, rejected, counting.count, wall(), ratios)
        for obs in observers:
            obs.on_step(record)
        stop = non_finite(ev)
        if interpolating and stop is None:
            due = [t for t in pending if t <= ev.t]
            del pending[: len(due)]
            step = interpolant or hermite_step(previous, ev)
            for k, t in enumerate(due):
                y, dydt = (ev.y, ev.dydt) if t == ev.t else step(t)
                save(t, y, dydt, ev if t == ev.t else None, ev, dt_next, closes=k == len(due) - 1)
        previous = ev
        progress = Progress(ev.t, steps, counting.count, record.wall, h)
        for event in events:
            stop = stop or event(ev, progress)
        return stop

    saved_at: float | None = None
    located: Evaluation | None = None
    with one_blas_thread():  # the methods' small dense algebra: solvers/blas.py
        ev = previous = counting.evaluate(t0, y0)
        stop = non_finite(ev)
        values = [c.g(t0, y0) for c in crossings] if stop is None else []
        pending = [t for t in saves if t > t0]
        if saves and saves[0] == t0 or stop:
            save(ev.t, ev.y, ev.dydt, ev, ev, dt)
        while stop is None:
            target = t_end if interpolating or not pending else pending[0]
            # The method gets the only reference to the segment's first evaluation (a
            # function argument taken from a container is not held by this frame), so that
            # it is freed once stepped past: an interpolating method's one segment is the
            # whole run, and a network's evaluation holds state-sized vectors.
            segment, ev = [ev], None
            ev, dt, stop = method.advance(counting, segment.pop(), target, dt, on_step)
            ev = located or ev
            hit = not interpolating and bool(pending) and ev.t == pending[0]
            if hit:
                pending.pop(0)
            if stop is None and ev.t >= t_end:
                stop = Stop("finished", "reached t_end")
            if hit or (stop is not None and stop.status != "event" and saved_at != ev.t):
                save(ev.t, ev.y, ev.dydt, ev, ev, dt)
    return Solution(ev, stop, dt, Counters(steps, counting.count, wall(), n_saved, counting.observed))
