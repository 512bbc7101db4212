"""Running one configuration end to end: build, integrate, store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from solvers import (Adaptive, Condition, Euler, ExactMomentum, GradientRatio, MaxSteps, RatioTarget, Stop,
                     TorchDiffEq, WallClock, integrate)
from solvers.events import Event
from solvers.method import Method

from .config import NATIVE_SOLVERS, RunConfig
from .errors import GflowError
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
    """The method a config asks for: a torchdiffeq method, or the native stepper (Euler for
    gradient flow, exact momentum for momentum flow) under the paper's controller or the
    ratio-target one. The output bound is max_dout / alpha on the raw outputs, i.e.
    max_dout on the scaled outputs alpha (f - f0) (seed 001)."""
    if cfg.solver not in NATIVE_SOLVERS:
        return TorchDiffEq(cfg.solver, rtol=cfg.rtol, atol=cfg.atol, step_size=cfg.dt)
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


def run(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, progress: bool | None = None) -> Trajectory:
    """Integrate the run ``cfg`` and store it densely in the HDF5 file ``out``.

    Every input is checked before the file is created, so bad input leaves nothing behind.
    A run that raises is recorded as ``failed`` with the error; Ctrl-C as ``stopped``.
    ``progress``: None shows a bar only on a terminal.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise GflowError(f"output {out} exists; pass --overwrite (overwrite=True) to replace it")
    if not out.parent.is_dir():
        raise GflowError(f"output directory {out.parent} does not exist")
    flow = build(cfg)
    method = make_method(cfg, flow)
    events = make_events(cfg, flow)
    times = save_times(cfg)
    writer = TrajectoryWriter(out, flow)
    bar = ProgressBar(cfg.t_end, times[1] if len(times) > 1 else cfg.t_end, progress)
    try:
        solution = integrate(flow, flow.y0, (0.0, cfg.t_end), method, save_at=times, observers=[writer, bar], events=events)
        writer.finish(solution.stop, solution.dt)
    except KeyboardInterrupt:
        writer.finish(Stop("stopped", "interrupted (SIGINT)"), None)
        raise
    except Exception as e:
        writer.finish(Stop("failed", f"{type(e).__name__}: {e}"), None)
        raise
    finally:
        bar.close()
    return Trajectory(out)
