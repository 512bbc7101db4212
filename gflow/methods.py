"""What a config asks the integrator for: the method, the stop events and the save times."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from solvers import (
    EXPRB43,
    Counters,
    EXPRB53S3,
    Adaptive,
    Chebyshev,
    Condition,
    Euler,
    ExactMomentum,
    ExponentialRosenbrock,
    FixedStep,
    GradientRatio,
    HeavyBall,
    LocalError,
    MaxSteps,
    Observer,
    RatioTarget,
    Scheme,
    Solution,
    WallClock,
    integrate,
    torchode_backend,
)
from solvers import sundials as sundials_module
from solvers.events import Event
from solvers.method import Method
from solvers.sundials import Sundials
from solvers.torchode_backend import TorchODE

from .config import DISCRETE, NATIVE_SOLVERS, TIGHT, RunConfig
from .errors import ConfigError
from .flow import GradientFlow
from .losses import margins


def save_times(cfg: RunConfig) -> list[float]:
    """t = 0, then the config's ``save_at`` and ``t_end``, or ``saves`` times from
    ``save_t_min`` to ``t_end`` (included), spaced geometrically or evenly (``save_spacing``)."""
    if cfg.save_at is not None:
        times = np.array([*cfg.save_at, cfg.t_end], dtype=float)
    elif cfg.save_t_min >= cfg.t_end:
        return [0.0, cfg.t_end]
    else:
        spaced = np.geomspace if cfg.save_spacing == "log" else np.linspace
        times = spaced(cfg.save_t_min, cfg.t_end, cfg.saves)
        times[-1] = cfg.t_end
    if cfg.solver in DISCRETE:  # on the iterates' grid t = k lr, at least one iteration in
        times = np.maximum(np.round(times / cfg.lr), 1) * cfg.lr
        times[-1] = cfg.t_end
    return [0.0, *np.unique(times).tolist()]


PAPER_SOLVERS = ("gradient-ratio", "momentum")


def interpolates(cfg: RunConfig) -> bool:
    """Whether save times come from the method's dense output: ``interpolate`` when set, else
    yes except for the paper's steppers, which land on save times as the original code did."""
    if cfg.solver in DISCRETE:
        return False
    return cfg.interpolate if cfg.interpolate is not None else cfg.solver not in PAPER_SOLVERS


def check_available(cfg: RunConfig) -> None:
    """Raise ConfigError when the solver needs an optional package that is not installed
    (before any file is written)."""
    try:
        if cfg.solver == "cvode":
            sundials_module._cvode()
        elif cfg.solver == "tsit5":
            torchode_backend._torchode()
    except ImportError as e:
        raise ConfigError("solver", cfg.solver, str(e)) from None


def exponential_scheme(cfg: RunConfig) -> Scheme:
    """The exponential Rosenbrock scheme of ``--solver exponential``, as named by
    :attr:`RunConfig.scheme`."""
    return {"exprb53s3": EXPRB53S3, "exprb43": EXPRB43}[cfg.scheme]


def make_method(cfg: RunConfig, flow: GradientFlow) -> Method:
    """The method a config asks for: a torchdiffeq method; the exponential Rosenbrock or the
    Runge-Kutta-Chebyshev stepper under local error control (rtol, atol), the error measured
    relative to the displacement from the initial state (``LocalError(origin=y0)``: the same
    rtol means the same accuracy of alpha (f - f0) at any alpha); or the native stepper (Euler for
    gradient flow, exact momentum for momentum flow) under the paper's controller or the
    ratio-target one. The output bound is max_dout / alpha on the raw outputs, i.e.
    max_dout on the scaled outputs alpha (f - f0) (seed 001)."""
    dense = interpolates(cfg)
    if cfg.solver == "cvode":
        return Sundials(rtol=cfg.tolerance, atol=cfg.atol)
    if cfg.solver == "tsit5":
        return TorchODE("tsit5", rtol=cfg.tolerance, atol=cfg.atol)
    if cfg.solver == "gd":
        return Adaptive(Euler(), FixedStep(cfg.lr), dt0=cfg.lr)
    if cfg.solver == "heavy-ball":
        return Adaptive(HeavyBall(cfg.momentum_beta), FixedStep(cfg.lr), dt0=cfg.lr)
    if cfg.solver not in NATIVE_SOLVERS:
        from solvers.torchdiffeq_backend import TorchDiffEq  # here: torchdiffeq loads SciPy's integrate and optimize

        return TorchDiffEq(cfg.solver, rtol=cfg.tolerance, atol=cfg.atol, step_size=cfg.dt, interpolates=dense)
    if cfg.solver == "exponential":
        # Krylov coefficients to rtol; the estimate is of the embedded third-order solution.
        # Both measured on digits (a tenth of rtol cost 10% more evaluations for nothing).
        scheme = exponential_scheme(cfg)
        stepper = ExponentialRosenbrock(krylov_tol=cfg.tolerance, scheme=scheme,
                                        stiff_scheme=EXPRB43 if scheme is EXPRB53S3 else None)
        # Safety 0.8 at rtol <= 1e-3: fewer evaluations (or within 1%) at equal error of f(T) than
        # 0.9 on all four digits problems from 1e-4 to 1e-6; 0.9 above, where 0.8 cost
        # exprb43 up to 1.6x more (alpha 1e2, rtol 1e-1; docs/SOLVERS.md has the numbers).
        control = LocalError(cfg.tolerance, cfg.atol, estimate=stepper.error_estimate, origin=flow.y0,
                             order=stepper.embedded_order, safety=0.8 if cfg.tolerance <= TIGHT else 0.9)
        return Adaptive(stepper, control, dt0=cfg.dt0, interpolates=dense)
    if cfg.solver == "chebyshev":
        return Adaptive(Chebyshev(seed=cfg.seed), LocalError(cfg.tolerance, cfg.atol, origin=flow.y0), dt0=cfg.dt0,
                        interpolates=dense)
    bounds = dict(max_dgrad=cfg.max_dgrad, max_dout=cfg.max_dout / cfg.alpha, grad_key=flow.grad_key)
    controller = GradientRatio(**bounds) if cfg.controller == "paper" else RatioTarget(**bounds)
    stepper = ExactMomentum(cfg.time_constant) if flow.momentum else Euler()
    return Adaptive(stepper, controller, dt0=cfg.dt0, interpolates=dense)


def make_events(cfg: RunConfig, flow: GradientFlow) -> list[Event]:
    """The config's stop events: every training margin reached, a wall-clock or step budget."""
    events: list[Event] = []
    if cfg.stop_margin is not None:
        margin = cfg.stop_margin

        def all_fitted(ev) -> bool:
            return bool((margins(flow.scaled(ev.aux["f"], "train"), flow.y_train) >= margin).all())

        events.append(Condition(all_fitted, f"every training margin >= {margin:g}"))
    if cfg.max_wall is not None:
        events.append(WallClock(cfg.max_wall))
    if cfg.max_steps is not None:
        events.append(MaxSteps(cfg.max_steps))
    return events


def integrate_flow(flow: GradientFlow, y0: torch.Tensor, t_span: tuple[float, float], *,
                   save_at: Sequence[float] = (), observers: Iterable[Observer] = (), events: Iterable[Event] = (),
                   dt: float | None = None, counters: Counters = Counters()) -> Solution:
    """:func:`solvers.integrate` with the config's method, through the mode switches of a
    hybrid flow: a flow with ``crossings()`` (the central flow) is integrated until one of
    its events is located, switched there (``cross``), and integrated on from that state
    with the same observers, save times and counters; its mode at ``y0`` comes from
    ``settle``. Every other flow is one call of ``integrate``."""
    observers, events = list(observers), list(events)
    hybrid = hasattr(flow, "crossings")
    if hybrid:
        flow.settle(y0)
    t0, t_end = t_span
    while True:
        crossings = flow.crossings() if hybrid else []
        solution = integrate(flow, y0, (t0, t_end), make_method(flow.cfg, flow), save_at=save_at,
                             observers=observers, events=[*crossings, *events], dt=dt, counters=counters)
        if solution.stop.status != "event":
            return solution
        flow.cross(solution.stop, solution.y)
        t0, y0, dt, counters = solution.t, solution.y, solution.dt, solution.counters
        save_at = [t for t in save_at if t > t0]
