"""Running one configuration end to end: build, integrate, store."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from solvers import (
    Adaptive,
    Chebyshev,
    Condition,
    Counters,
    Euler,
    ExactMomentum,
    ExponentialRosenbrock,
    GradientRatio,
    LocalError,
    MaxSteps,
    RatioTarget,
    Stop,
    TorchDiffEq,
    WallClock,
    integrate,
)
from solvers.events import Event
from solvers.method import Method

from .config import NATIVE_SOLVERS, RunConfig
from .errors import GflowError, OutputExists
from .flow import GradientFlow, build
from .progress import ProgressBar
from .store import Trajectory, TrajectoryWriter


def save_times(cfg: RunConfig) -> list[float]:
    """t = 0, then ``saves`` times log-spaced from ``save_t_min`` to ``t_end`` (included)."""
    if cfg.save_t_min >= cfg.t_end:
        return [0.0, cfg.t_end]
    times = np.geomspace(cfg.save_t_min, cfg.t_end, cfg.saves)
    times[-1] = cfg.t_end
    return [0.0, *np.unique(times).tolist()]


def make_method(cfg: RunConfig, flow: GradientFlow) -> Method:
    """The method a config asks for: a torchdiffeq method; the exponential Rosenbrock or the
    Runge-Kutta-Chebyshev stepper under local error control (rtol, atol); or the native stepper (Euler for
    gradient flow, exact momentum for momentum flow) under the paper's controller or the
    ratio-target one. The output bound is max_dout / alpha on the raw outputs, i.e.
    max_dout on the scaled outputs alpha (f - f0) (seed 001)."""
    if cfg.solver not in NATIVE_SOLVERS:
        return TorchDiffEq(cfg.solver, rtol=cfg.rtol, atol=cfg.atol, step_size=cfg.dt)
    if cfg.solver == "exponential":
        # Krylov coefficients a tenth of rtol: their error then stays below the step's own.
        stepper = ExponentialRosenbrock(krylov_tol=cfg.rtol / 10)
        return Adaptive(stepper, LocalError(cfg.rtol, cfg.atol, estimate=stepper.error_estimate), dt0=cfg.dt0)
    if cfg.solver == "chebyshev":
        return Adaptive(Chebyshev(seed=cfg.seed), LocalError(rtol=cfg.rtol, atol=cfg.atol), dt0=cfg.dt0)
    bounds = dict(max_dgrad=cfg.max_dgrad, max_dout=cfg.max_dout / cfg.alpha)
    controller = GradientRatio(**bounds) if cfg.controller == "paper" else RatioTarget(**bounds)
    stepper = ExactMomentum(cfg.tau) if flow.momentum else Euler()
    return Adaptive(stepper, controller, dt0=cfg.dt0)


def make_events(cfg: RunConfig, flow: GradientFlow) -> list[Event]:
    events: list[Event] = []
    if cfg.stop_margin is not None:
        margin = cfg.stop_margin

        def all_fitted(ev) -> bool:
            return bool((flow.scaled(ev.aux["f"], "train") * flow.y_train >= margin).all())

        events.append(Condition(all_fitted, f"every training margin alpha*y*(f - f0) >= {margin:g}"))
    if cfg.max_wall is not None:
        events.append(WallClock(cfg.max_wall))
    if cfg.max_steps is not None:
        events.append(MaxSteps(cfg.max_steps))
    return events


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during a run; the run was stopped cleanly and saved."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


class SignalStop:
    """Stop event for SIGINT and SIGTERM: the handler only records the signal, and the
    integration stops (status ``stopped``) at the next accepted step, which is then saved,
    so a signal never lands in the middle of a write. A second signal aborts at once."""

    def __init__(self) -> None:
        self.signame: str | None = None

    def __call__(self, ev: object, progress: object) -> Stop | None:
        return Stop("stopped", f"interrupted ({self.signame})") if self.signame else None

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM while inside (main thread only: Python's rule)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: object) -> None:
            if self.signame is not None:
                raise Interrupted(self.signame)
            self.signame = signal.Signals(signum).name

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _integrate_into(
    writer: TrajectoryWriter, flow: GradientFlow, y0: torch.Tensor, t0: float, times: list[float],
    progress: bool | None, dt: float | None = None, counters: Counters = Counters(),
) -> None:
    """Integrate into an open writer and record how it ended, whatever happens; raise
    :class:`Interrupted` after a clean stop on a signal."""
    cfg = flow.cfg
    bar = ProgressBar(cfg.t_end, max(t0, times[0] if times else cfg.t_end, cfg.save_t_min), progress)
    signals = SignalStop()
    try:
        with signals.installed():
            solution = integrate(flow, y0, (t0, cfg.t_end), make_method(cfg, flow), save_at=times,
                                 observers=[writer, bar], events=[*make_events(cfg, flow), signals],
                                 dt=dt, counters=counters)
            writer.finish(solution.stop, solution.dt)
    except KeyboardInterrupt as e:  # a second signal, or Ctrl-C outside the integration loop
        writer.finish(Stop("stopped", f"interrupted ({getattr(e, 'signame', 'SIGINT')}) during a write"), None)
        raise
    except Exception as e:
        writer.finish(Stop("failed", f"{type(e).__name__}: {e}"), None)
        raise
    finally:
        bar.close()
    if signals.signame:
        raise Interrupted(signals.signame)


def run(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, progress: bool | None = None) -> Trajectory:
    """Integrate the run ``cfg`` and store it densely in the HDF5 file ``out``.

    Every input is checked before the file is created, so bad input leaves nothing behind.
    A run that raises is recorded as ``failed`` with the error; SIGINT/SIGTERM stop it
    cleanly as ``stopped`` (and raise :class:`Interrupted`). ``progress``: None shows a
    bar only on a terminal.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExists(f"output {out} exists; pass --overwrite (overwrite=True) to replace it")
    if not out.parent.is_dir():
        raise GflowError(f"output directory {out.parent} does not exist")
    flow = build(cfg)
    writer = TrajectoryWriter(out, flow, overwrite=overwrite)
    _integrate_into(writer, flow, flow.y0, 0.0, save_times(cfg), progress)
    return Trajectory(out)


def resume(path: str | Path, *, max_steps: int | None = None, max_wall: float | None = None,
           progress: bool | None = None) -> Trajectory:
    """Continue a killed (``running``) or ``stopped`` run from its last complete save: state,
    velocity, step size and counters come from the file. For the native steppers the
    continuation is bitwise the uninterrupted run (it pays one evaluation to restart); for
    torchdiffeq methods it agrees to the method's tolerance. ``max_steps`` and ``max_wall``
    replace the stored budgets (both count the whole run, earlier parts included); None
    keeps them. A run another live process is writing is refused."""
    traj = Trajectory(path)
    if traj.status not in ("running", "stopped"):
        raise GflowError(f"{path}: status {traj.status}; only running (killed) or stopped runs can be resumed")
    if len(traj) == 0:
        raise GflowError(f"{path}: no save to resume from")
    if not traj.has("saves/state"):
        raise GflowError(f"{path}: saved without states, cannot be resumed")
    budgets = {k: v for k, v in {"max_steps": max_steps, "max_wall": max_wall}.items() if v is not None}
    cfg = traj.config.replace(**budgets)
    last = traj.saves.iloc[-1]
    t_last = float(last["t"])
    flow = build(cfg)
    writer = TrajectoryWriter(path, flow, resume=True)
    if t_last >= cfg.t_end:
        writer.finish(Stop("finished", "reached t_end"), None)
        return Trajectory(path)
    counters = Counters(int(last["step"]), int(last["evals"]), float(last["wall"]), len(traj))
    dt = None if np.isnan(last["dt"]) else float(last["dt"])
    state = traj.state(-1).to(flow.w0)
    _integrate_into(writer, flow, state, t_last, [t for t in save_times(cfg) if t > t_last], progress, dt, counters)
    return Trajectory(path)
