"""Running one configuration end to end: build, integrate, store."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from solvers import Counters, Stop

from .batching import joined
from .config import RunConfig
from .errors import ConfigError, DiskFull, FileFormatError, GflowError, OutputExists
from .flow import DataArg, GradientFlow, build
from .limits import ReleaseFreedMemory
from .losses import Loss
from .methods import check_available, integrate_flow, make_events, save_times
from .progress import ProgressBar
from .store import RunLock, TrajectoryWriter
from .store.format import repair_truncated
from .store.reader import TrajectoryFile
from .threads import torch_threads
from .trajectory import Trajectory, matching_flow


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during a run; the run was stopped cleanly and saved."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


class SignalStop:
    """Stop event for SIGINT and SIGTERM: the handler only records the signal, and the
    integration stops (status ``stopped``) at the next accepted step, which is then saved,
    so a signal never lands in the middle of a write. A second signal aborts at once.

    Python runs handlers on the main thread only: a stop installed on another thread (a
    member of a batched ensemble) is told of the signals the main thread's stop receives."""

    def __init__(self) -> None:
        self.signame: str | None = None

    def __call__(self, ev: object, progress: object) -> Stop | None:
        return Stop("stopped", f"interrupted ({self.signame})") if self.signame else None

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM while inside (on another thread: hear the main thread's)."""
        if threading.current_thread() is not threading.main_thread():
            _LISTENING.add(self)
            try:
                yield
            finally:
                _LISTENING.discard(self)
            return

        def handler(signum: int, frame: object) -> None:
            if self.signame is not None:
                raise Interrupted(self.signame)
            self.signame = signal.Signals(signum).name
            for other in list(_LISTENING):
                other.signame = other.signame or self.signame

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


_LISTENING: set[SignalStop] = set()  # stops installed on other threads


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
        with signals.installed(), joined(flow):
            solution = integrate_flow(flow, y0, (t0, cfg.t_end), save_at=times, observers=[writer, bar, ReleaseFreedMemory()],
                                      events=[*make_events(cfg, flow), signals], dt=dt, counters=counters)
            writer.finish(solution.stop, solution.dt)
    except DiskFull as e:  # resumable once there is room (finish does nothing after a failed write)
        writer.finish(Stop("stopped", str(e)), None)
        raise
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


def run(cfg: RunConfig, out: str | Path, *, model: nn.Module | None = None, data: DataArg | None = None,
        loss: Loss | str | None = None, overwrite: bool = False, progress: bool | None = None) -> Trajectory:
    """Integrate the run ``cfg`` and store it densely in the HDF5 file ``out``.

    ``model`` (any ``torch.nn.Module`` with outputs of shape (n,) or (n, k)), ``data``
    (``(x_train, y_train, x_test, y_test)`` or ``(x_train, y_train)``, tensors or arrays) and
    ``loss`` (a name or a callable ``loss(a, y) -> per-sample losses`` on a = alpha (f - f0))
    replace the config's; see :func:`gflow.build`. A run made from objects is read back,
    resumed or analysed by passing the same objects again.

    Every input is checked before the file is created, so bad input leaves nothing behind.
    A run that raises is recorded as ``failed`` with the error; SIGINT/SIGTERM stop it
    cleanly as ``stopped`` (and raise :class:`Interrupted`). ``progress``: None shows a
    bar only on a terminal.
    """
    if cfg.ensemble > 1:
        raise ConfigError("ensemble", cfg.ensemble, "run() integrates one network; an ensemble goes to a directory "
                          "of members: gflow.run_ensemble(cfg, directory) (gflow run --ensemble K --out DIR)")
    out = Path(out)
    _check_output(out, overwrite)
    check_available(cfg)
    with torch_threads(cfg.threads):
        flow = build(cfg, model=model, data=data, loss=loss)
        writer = TrajectoryWriter(out, flow, save_times(cfg), overwrite=overwrite)
        _integrate_into(writer, flow, flow.y0, 0.0, save_times(cfg), progress)
    return Trajectory(out, model=model, data=data, loss=loss, trust_code=True)  # the caller's own config


# Bytes a file name may have: the file system's usual limit (NAME_MAX) less room for the
# hidden names built from it while it is written (".NAME.xxxxxxxx.resume", "NAME.lock").
MAX_NAME_BYTES = 255 - 20


def _check_output(out: Path, overwrite: bool) -> None:
    """An output path a new run may create: its directory exists, its name fits
    (MAX_NAME_BYTES), and it is absent, or a regular file and ``overwrite`` is given (a
    directory, device or other node never is)."""
    if len(out.name.encode()) > MAX_NAME_BYTES:
        raise GflowError(f"output name {out.name[:40]}... has {len(out.name.encode())} bytes; at most {MAX_NAME_BYTES} "
                         "(the file system's limit, less room for the lock and temporary names)")
    if out.is_symlink():  # a run writes only a regular file it creates, never a link nor in place of one
        raise GflowError(f"output {out} is a symbolic link; give the path of a regular file")
    if out.exists():
        if not out.is_file():
            raise GflowError(f"output {out} exists and is not a regular file; --overwrite replaces only files")
        if not overwrite:
            raise OutputExists(f"output {out} exists; pass --overwrite (overwrite=True) to replace it")
    if not out.parent.is_dir():
        raise GflowError(f"output directory {out.parent} does not exist")


def resume(path: str | Path, *, model: nn.Module | None = None, data: DataArg | None = None,
           loss: Loss | str | None = None, max_steps: int | None = None, max_wall: float | None = None,
           progress: bool | None = None, trust_code: bool = False) -> Trajectory:
    """Continue a killed (``running``) or ``stopped`` run from its checkpoint (the last
    accepted state on disk: where it stopped, or its last complete save if it was killed):
    state, velocity, step size and counters come from the file. For the gradient-ratio,
    momentum and exponential steppers the continuation is bitwise the uninterrupted run,
    saves included (it pays one evaluation to restart); for the others it agrees to the
    method's tolerance. ``max_steps`` and ``max_wall``
    replace the stored budgets (both count the whole run, earlier parts included); None
    keeps them. A run another live process is writing is refused. A run made from Python
    objects needs them again (``model``, ``data``, ``loss``), checked against the file. A
    run made from factory, loader or loss references rebuilds them from the file's config:
    code named by the file, imported only with ``trust_code=True`` (``--trust-code``). A
    file a write left short for lack of space is extended to its recorded size first."""
    path = Path(path)
    if path.is_symlink():  # resuming replaces the file: never a link's target, nor the link by a file
        raise GflowError(f"{path} is a symbolic link; resume the file itself ({os.path.realpath(path)})")
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file" if not path.exists() else f"{path}: not a file (a trajectory is "
                              "one HDF5 file)")
    lock = RunLock(path)  # before touching the file: no live writer may hold it
    try:
        repair_truncated(path)
        with torch_threads(TrajectoryFile(path).threads):  # those it was created with: bitwise
            return _resume(path, lock, {"model": model, "data": data, "loss": loss, "trust_code": trust_code},
                           max_steps, max_wall, progress)
    finally:
        lock.release()


def _resume(path: str | Path, lock: RunLock, given: dict, max_steps: int | None, max_wall: float | None,
            progress: bool | None) -> Trajectory:
    traj = Trajectory(path)
    if traj.status not in ("running", "stopped"):
        raise GflowError(f"{path}: status {traj.status}; only running (killed) or stopped runs can be resumed")
    if len(traj) == 0:
        raise GflowError(f"{path}: no save to resume from")
    if not traj.has("saves/state"):
        raise GflowError(f"{path}: saved without states, cannot be resumed")
    budgets = {k: v for k, v in {"max_steps": max_steps, "max_wall": max_wall}.items() if v is not None}
    cfg = traj.config.replace(**budgets)
    flow = matching_flow(traj, **given)
    flow.cfg = cfg  # new budgets only: the ODE is the same, and the file records them
    start = _continuation(traj)
    writer = TrajectoryWriter(path, flow, save_times(cfg), resume=True, lock=lock)
    if start.t >= cfg.t_end:
        writer.finish(Stop("finished", "reached t_end"), None)
        return Trajectory(path, **given)
    times = [t for t in save_times(cfg) if t > start.t]
    _integrate_into(writer, flow, start.state.to(flow.w0), start.t, times, progress, start.dt, start.counters)
    return Trajectory(path, **given)


@dataclass(frozen=True)
class _Start:
    t: float
    state: torch.Tensor
    dt: float | None
    counters: Counters


def _continuation(traj: Trajectory) -> _Start:
    """Where a resumed run starts: the checkpoint, or the last save of an older file."""
    ckpt = traj.checkpoint()
    if ckpt is None:
        last = traj.saves.iloc[-1]
        ckpt = {"t": float(last["t"]), "state": traj.state(-1), "dt": float(last["dt"]), "step": int(last["step"]),
                "evals": int(last["evals"]), "wall": float(last["wall"]), "saves": len(traj)}
    dt = None if np.isnan(ckpt["dt"]) else float(ckpt["dt"])
    return _Start(float(ckpt["t"]), ckpt["state"], dt,
                  Counters(ckpt["step"], ckpt["evals"], float(ckpt["wall"]), ckpt["saves"]))
