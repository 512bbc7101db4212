"""HDF5 trajectories: a streaming writer (an observer) and a reader that queries.

The layout is a versioned contract, documented in docs/FORMAT.md. Readers reject files of
another format or a newer version with one clear error naming the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch

from solvers import Observer, SaveRecord, StepRecord, Stop, hermite, integrate

from .config import RunConfig
from .errors import FileFormatError, GflowError, RunBusy
from .flow import GradientFlow
from .geometry import Curvature, curvature, first_crossing, linearization_gap
from .kernels import ntk, relative_change

if TYPE_CHECKING:  # pandas is imported only when a table is read
    import pandas as pd

FORMAT = "gflow-trajectory"
FORMAT_VERSION = 3
# Version 2 lacks /steps/error_ratio; it is read (the column reads as NaN) and upgraded on resume.
READ_VERSIONS = (2, 3)
REASON_BYTES = 512

STEP_COLUMNS = ("t", "dt", "loss", "grad_norm", "dgrad_ratio", "dout_ratio", "error_ratio", "rejected", "evals", "wall")
ADDED_IN_3 = ("steps/error_ratio",)
SAVE_SCALARS = ("t", "step", "evals", "wall", "dt", "train_loss", "train_err", "test_loss", "test_err", "grad_norm")
REQUIRED = (
    "run/status", "run/stop_reason", "run/next_dt", "init/w0", "init/f0_train", "init/f0_test", "data/y_train", "data/y_test",
    *(f"steps/{c}" for c in STEP_COLUMNS), *(f"saves/{c}" for c in SAVE_SCALARS),
    "saves/f_train", "saves/f_test", "saves/weight_change",
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> str:
    import h5py as _h5py
    import torchdiffeq

    return json.dumps({
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "h5py": _h5py.__version__, "torchdiffeq": torchdiffeq.__version__, "gflow": _gflow_version(),
    })


def _gflow_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gflow")
    except PackageNotFoundError:
        return "unknown"


def _table(group: h5py.Group, name: str, width: int | None = None, dtype: Any = "f8") -> None:
    shape, maxshape = ((0,), (None,)) if width is None else ((0, width), (None, width))
    chunks = (1024,) if width is None else (1, max(width, 1))
    # No compression: float64 parameters and outputs compress by a few percent at best,
    # and gzip on a 26,500-parameter state costs ~6 ms per row (measured), 5% of a run.
    group.create_dataset(name, shape=shape, maxshape=maxshape, dtype=dtype, chunks=chunks)


def _append(ds: h5py.Dataset, rows: np.ndarray) -> None:
    """Extend ``ds`` along its first axis by ``rows`` (same trailing shape).

    Written through h5py's low-level API: the high-level resize and slice assignment
    spend ~0.17 ms of Python per call, three times the write itself, and a save appends
    ~25 rows (measured: 3% of the default run's wall time, 1% this way)."""
    rows = np.ascontiguousarray(rows)
    dsid = ds.id
    n = dsid.shape[0]
    dsid.set_extent((n + rows.shape[0], *rows.shape[1:]))
    target = dsid.get_space()
    target.select_hyperslab((n,) + (0,) * (rows.ndim - 1), rows.shape)
    dsid.write(h5py.h5s.create_simple(rows.shape), target, rows)


@dataclass(frozen=True)
class Point:
    """A trajectory at time t: the ODE state and the raw outputs on train and test."""

    t: float
    state: torch.Tensor
    f_train: np.ndarray
    f_test: np.ndarray


class TrajectoryWriter(Observer):
    """Streams a run into ``path`` in HDF5 SWMR mode, so other processes can read it while
    it grows and a killed run leaves a valid file.

    Step rows are buffered and written, with the save row, at every save; ``saves/t`` is
    extended last, after a flush, and marks the save complete. Readers count only complete
    saves. The writer holds an exclusive lock (``<path>.lock``) for its
    lifetime, so no second process can write or resume the same run. ``finish(stop)``
    records the final status and the step size to resume with.
    """

    def __init__(self, path: str | Path, flow: GradientFlow, keep_state: bool = True, resume: bool = False,
                 overwrite: bool = False) -> None:
        self.flow = flow
        self.path = Path(path)
        self._rows: list[tuple[float, ...]] = []
        self._w0_layers = [flow.w0[s] for s in flow.model.layers.values()]
        self._kernel_x = flow.x_train[: flow.cfg.kernel_n]
        self._lock = RunLock(self.path)
        try:
            if resume:
                with _open(self.path) as f:  # again under the lock: another process may have just finished it
                    status = f["run/status"][()].decode()
                if status not in ("running", "stopped"):
                    raise GflowError(f"{self.path}: status {status}; only running (killed) or stopped runs can be resumed")
                _rewrite_complete_saves(self.path, flow.cfg.to_json())
                self.file = h5py.File(self.path, "r+", libver="latest")
                _upgrade(self.file)
                if flow.cfg.kernel_n > 0:
                    self._theta0 = torch.from_numpy(self.file["init/theta"][()]).to(flow.w0)
            else:
                if overwrite:
                    self.path.unlink(missing_ok=True)
                try:  # "w-" fails if the file exists: two processes racing for one output cannot both win
                    self.file = h5py.File(self.path, "w-", libver="latest")
                except FileExistsError:
                    raise RunBusy(f"output {self.path} was just created by another process") from None
                self._create(flow, keep_state)
        except BaseException:
            self._lock.release()
            raise
        self.keep_state = "state" in self.file["saves"]
        self._set_status("running", "")
        self.file.swmr_mode = True
        # Handles looked up once: h5py's name lookup costs more than a small append.
        self._steps = {c: self.file["steps"][c] for c in STEP_COLUMNS}
        self._saves = {name: self.file["saves"][name] for name in self.file["saves"]}

    def _create(self, flow: GradientFlow, keep_state: bool) -> None:
        f = self.file
        f.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": flow.cfg.to_json(),
            "versions": _versions(), "device": str(flow.w0.device), "created": _now(), "n_params": flow.n_params,
        })
        # Mutable fields are fixed-size datasets, not attributes: SWMR allows rewriting data only.
        run = f.create_group("run")
        run.create_dataset("status", shape=(), dtype="S16")
        run.create_dataset("stop_reason", shape=(), dtype=f"S{REASON_BYTES}")
        run.create_dataset("next_dt", data=np.nan)
        init = f.create_group("init")
        init["w0"] = flow.w0.cpu().numpy()
        init["f0_train"] = flow.f0_train.cpu().numpy()
        init["f0_test"] = flow.f0_test.cpu().numpy()
        data = f.create_group("data")
        for name in ("train_indices", "test_indices", "classes_train", "classes_test"):
            data[name] = getattr(flow.data, name)
        data["y_train"] = flow.y_train.cpu().numpy()
        data["y_test"] = flow.y_test.cpu().numpy()
        data.attrs["digest"] = flow.data.digest()
        steps = f.create_group("steps")
        for c in STEP_COLUMNS:
            _table(steps, c)
        saves = f.create_group("saves")
        for c in SAVE_SCALARS:
            _table(saves, c)
        _table(saves, "f_train", len(flow.y_train))
        _table(saves, "f_test", len(flow.y_test))
        _table(saves, "weight_change", len(flow.model.layers))
        saves.attrs["layers"] = json.dumps(list(flow.model.layers))
        if keep_state:
            _table(saves, "state", len(flow.y0))
            _table(saves, "dstate", len(flow.y0))
        if flow.cfg.kernel_n > 0:
            self._theta0 = self._kernel(flow.w0)
            init["theta"] = self._theta0.cpu().numpy()
            kernel = f.create_group("kernel")
            kernel.attrs["n"] = len(self._kernel_x)
            _table(kernel, "t")
            _table(kernel, "change")
            _table(kernel, "norm")
            n = len(self._kernel_x)
            kernel.create_dataset("theta", shape=(0, n, n), dtype="f8", maxshape=(None, n, n))

    def _set_status(self, status: str, reason: str, next_dt: float = np.nan) -> None:
        run = self.file["run"]
        run["status"][()] = status.encode()
        run["stop_reason"][()] = reason.encode()[:REASON_BYTES]
        run["next_dt"][()] = next_dt

    def _kernel(self, w: torch.Tensor) -> torch.Tensor:
        return ntk(self.flow.model, w, self._kernel_x, max_memory=self.flow.cfg.kernel_memory_mb * 2**20)

    def _snapshot_kernel(self, w: torch.Tensor) -> None:
        """Append Theta(w) and its change; the caller appends ``kernel/t`` to commit it."""
        theta = self._kernel(w)
        k = self.file["kernel"]
        _append(k["change"], np.array([relative_change(theta, self._theta0)]))
        _append(k["norm"], np.array([float(theta.norm())]))
        _append(k["theta"], theta.cpu().numpy()[None])

    def on_step(self, record: StepRecord) -> None:
        ev = record.ev
        self._rows.append((
            ev.t, record.dt, float(ev.aux["loss"]), math.sqrt(ev.sq_norm("grad")),
            record.ratios.get("dgrad", np.nan), record.ratios.get("dout", np.nan), record.ratios.get("error", np.nan),
            record.rejected, record.evals, record.wall,
        ))

    def _flush_steps(self) -> None:
        if self._rows:
            rows = np.array(self._rows, dtype=np.float64)
            for i, c in enumerate(STEP_COLUMNS):
                _append(self._steps[c], rows[:, i])
            self._rows = []

    def on_save(self, record: SaveRecord) -> None:
        flow, ev = self.flow, record.ev
        w = flow.weights(ev.y)
        f_train = ev.aux["f"]
        f_test = flow.outputs(w, flow.x_test)
        change = [float((w[s] - w0).norm() / w0.norm()) for s, w0 in zip(flow.model.layers.values(), self._w0_layers)]
        scalars = {
            "t": ev.t, "step": record.steps, "evals": record.evals, "wall": record.wall,
            "dt": np.nan if record.dt is None else record.dt,
            "train_loss": float(ev.aux["loss"]), "train_err": flow.error(f_train, "train"),
            "test_loss": flow.loss(f_test, "test"), "test_err": flow.error(f_test, "test"),
            "grad_norm": math.sqrt(ev.sq_norm("grad")),
        }
        saves = self._saves
        _append(saves["f_train"], f_train.cpu().numpy()[None])
        _append(saves["f_test"], f_test.cpu().numpy()[None])
        _append(saves["weight_change"], np.array([change]))
        if self.keep_state:
            _append(saves["state"], ev.y.detach().cpu().numpy()[None])
            _append(saves["dstate"], ev.dydt.detach().cpu().numpy()[None])
        snapshot = self.flow.cfg.kernel_n > 0 and record.index % self.flow.cfg.kernel_every == 0
        if snapshot:
            self._snapshot_kernel(w)
        self._flush_steps()
        for c, v in scalars.items():
            if c != "t":
                _append(saves[c], np.array([v], dtype=np.float64))
        # Commit in two flushes: HDF5 may write dirty metadata in any order, so the markers
        # (saves/t, kernel/t) are extended only once every other row of this save is on disk.
        self.file.flush()
        if snapshot:
            _append(self.file["kernel/t"], np.array([ev.t]))
        _append(saves["t"], np.array([ev.t]))
        self.file.flush()

    def finish(self, stop: Stop, dt: float | None) -> None:
        """Record how the run ended, close the file and release the lock (idempotent)."""
        if self.file:
            self._flush_steps()
            self._set_status(stop.status, stop.reason, np.nan if dt is None else dt)
            self.file.close()
        self._lock.release()


class RunLock:
    """An exclusive advisory lock on ``<path>.lock`` (flock), held while a process writes
    the run; the operating system releases it when the process dies, so a killed run is
    resumable at once and a live one is never written twice."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RunBusy(f"{path} is being written by another live process (lock {self.path})") from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the empty lock file stays, harmless
            self._fd = None


def _rewrite_complete_saves(path: Path, config: str) -> None:
    """Make ``path`` an appendable copy of itself holding only complete saves, with the
    config attribute replaced by ``config`` (a resumed run may carry new budgets).

    A killed SWMR writer leaves the file marked open-for-write, which HDF5 refuses to open
    for writing again; a readable copy (written to a temporary file, then atomically
    renamed over the original) clears that, and trims rows a kill left half-written:
    saves past the last complete one, steps past its step count, kernel snapshots after it.
    """
    tmp = path.with_name(path.name + ".resume.tmp")
    with h5py.File(path, "r", swmr=True) as src, h5py.File(tmp, "w", libver="latest") as dst:
        for name in src:
            src.copy(src[name], dst, name=name)
        dst.attrs.update(src.attrs)
        dst.attrs["config"] = config
        n = dst["saves/t"].shape[0]
        for ds in dst["saves"].values():
            ds.resize(n, axis=0)
        last_step = int(dst["saves/step"][n - 1]) if n else 0
        for ds in dst["steps"].values():
            ds.resize(last_step, axis=0)
        if "kernel" in dst:
            kt = dst["kernel/t"][()]
            keep = int(np.searchsorted(kt, dst["saves/t"][n - 1], side="right")) if n else 0
            for ds in dst["kernel"].values():
                ds.resize(keep, axis=0)
    os.replace(tmp, path)


@contextmanager
def _open(path: Path) -> Iterator[h5py.File]:
    """Open for reading, also while a SWMR writer appends; HDF5's low-level errors on a
    damaged file become one FileFormatError naming the file.

    A closed file is opened plainly, so HDF5 checks it whole (end of file, checksums) and
    fails fast; only a file marked open-for-write (a live or killed run) is opened in SWMR
    mode, whose reader retries failed checksums for a while, expecting a writer to fix them.
    """
    try:
        with _open_plain_or_swmr(path) as f:
            yield f
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        if isinstance(e, FileNotFoundError) and not path.exists():
            raise FileFormatError(f"{path}: no such file") from None
        raise FileFormatError(f"{path}: not an HDF5 file, or truncated or damaged ({str(e).splitlines()[0]})") from None


TRUNCATION_WAIT_S = 0.2


def _open_plain_or_swmr(path: Path) -> h5py.File:
    """h5py.File for reading: plainly, or in SWMR mode when a writer holds the file open.

    A live writer's flush can leave the end-of-file address in the superblock ahead of the
    bytes on disk for a moment, and HDF5 then reports a "truncated file" before it looks
    at the open-for-write flag; the writer's flush completes the file within milliseconds,
    so a truncation is retried for ``TRUNCATION_WAIT_S`` before it counts as damage."""
    deadline = time.monotonic() + TRUNCATION_WAIT_S
    while True:
        try:
            return h5py.File(path, "r")
        except OSError as e:
            if "already open for write" in str(e):
                return h5py.File(path, "r", swmr=True)
            if "truncated file" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _upgrade(f: h5py.File) -> None:
    """Bring a version-2 file opened for resuming to version 3: its earlier steps get NaN
    error ratios (they were not recorded). Runs before SWMR mode, which forbids new datasets."""
    if int(f.attrs["format_version"]) >= 3:
        return
    n = _committed(f, "steps/t")
    for name in ADDED_IN_3:
        group, column = name.split("/")
        _table(f[group], column)
        _append(f[name], np.full(n, np.nan))
    f.attrs["format_version"] = 3  # not FORMAT_VERSION: a later version's additions are not made here


def _committed(f: h5py.File, name: str) -> int:
    """Rows of ``name`` that belong to complete saves (or complete kernel snapshots):
    a reader running beside the writer may see tables one row ahead of the marker."""
    group = name.split("/")[0]
    if group == "saves":
        return f["saves/t"].shape[0]
    if group == "kernel":
        return f["kernel/t"].shape[0]
    if group == "steps":
        return min(f[f"steps/{c}"].shape[0] for c in STEP_COLUMNS if c in f["steps"])
    return f[name].shape[0] if f[name].shape else 0


def _check(path: Path) -> None:
    """Raise FileFormatError unless ``path`` is a complete gflow trajectory we can read."""
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    with _open(path) as f:
        if f.attrs.get("format") != FORMAT:
            raise FileFormatError(f"{path}: not a gflow trajectory (format attribute {f.attrs.get('format')!r})")
        try:
            version = int(f.attrs.get("format_version", -1))
        except (TypeError, ValueError):
            version = -1
        if version not in READ_VERSIONS:
            raise FileFormatError(
                f"{path}: trajectory format version {version}; this gflow reads versions "
                f"{', '.join(map(str, READ_VERSIONS))}" + (" (upgrade gflow)" if version > FORMAT_VERSION else "")
            )
        for name in REQUIRED:
            if version < 3 and name in ADDED_IN_3:
                continue
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise FileFormatError(f"{path}: missing dataset /{name} (damaged or incomplete file)")
        n = f["saves/t"].shape[0]
        for name, ds in f["saves"].items():
            if ds.shape[0] < n:
                raise FileFormatError(f"{path}: /saves/{name} has fewer rows than /saves/t (damaged file)")


class Trajectory:
    """A stored run, queried lazily: each accessor opens the file, reads what it needs and
    closes it, so a reader holds no handle between queries. Safe to use while the run is
    still being written (HDF5 SWMR): it sees every save completed so far."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _check(self.path)
        self.config = RunConfig.from_json(self.attrs["config"], f"{self.path} /config")
        self._flow: GradientFlow | None = None

    def _file(self) -> contextlib.AbstractContextManager[h5py.File]:
        return _open(self.path)

    @property
    def attrs(self) -> dict[str, Any]:
        """The immutable root attributes: format, config, versions, device, created, n_params."""
        with self._file() as f:
            return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}

    def _run_field(self, name: str) -> Any:
        value = self.read(f"run/{name}")
        return value.decode() if isinstance(value, bytes) else float(value)

    @property
    def status(self) -> str:
        """running, finished, stopped or failed."""
        return self._run_field("status")

    @property
    def stop_reason(self) -> str:
        return self._run_field("stop_reason")

    def has(self, name: str) -> bool:
        """Whether the file holds the dataset or group ``name`` (e.g. "kernel")."""
        with self._file() as f:
            return name in f

    def read(self, name: str) -> np.ndarray:
        """Any dataset by path, e.g. ``read("saves/test_err")``; tables of saves, steps and
        kernel snapshots hold only complete rows."""
        with self._file() as f:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise FileFormatError(f"{self.path}: no dataset /{name}")
            ds = f[name]
            if ds.shape and name.split("/")[0] in ("saves", "steps", "kernel"):
                return ds[: _committed(f, name)]
            return ds[()]

    @property
    def save_times(self) -> np.ndarray:
        return self.read("saves/t")

    def __len__(self) -> int:
        with self._file() as f:
            return f["saves/t"].shape[0]

    def _row(self, name: str, i: int) -> np.ndarray:
        with self._file() as f:
            if name not in f:
                raise FileFormatError(f"{self.path}: no dataset /{name} (was the run saved without states?)")
            n = f["saves/t"].shape[0]
            if not -n <= i < n:
                raise IndexError(f"save index {i} out of range for {n} saves")
            return f[name][i % n]

    def outputs(self, i: int, split: str = "train") -> np.ndarray:
        """Raw outputs f(w(t_i), x) on ``split`` ("train" or "test") at the i-th save."""
        if split not in ("train", "test"):
            raise ValueError(f"split = {split!r}: must be train or test")
        return self._row(f"saves/f_{split}", i)

    def state(self, i: int) -> torch.Tensor:
        """The flat ODE state at the i-th save (w, or (w, v) for momentum)."""
        return torch.from_numpy(self._row("saves/state", i))

    def derivative(self, i: int) -> torch.Tensor:
        """dy/dt at the i-th save."""
        return torch.from_numpy(self._row("saves/dstate", i))

    def _table(self, group: str, columns: Sequence[str]) -> pd.DataFrame:
        import pandas as pd

        with self._file() as f:
            n = _committed(f, f"{group}/{columns[0]}")
            # A column added by a later format version reads as NaN in an older file.
            return pd.DataFrame({c: f[f"{group}/{c}"][:n] if c in f[group] else np.full(n, np.nan) for c in columns})

    @property
    def steps(self) -> pd.DataFrame:
        """One row per accepted step: t, dt, loss, grad_norm, ratios, rejected, evals, wall."""
        return self._table("steps", STEP_COLUMNS)

    @property
    def saves(self) -> pd.DataFrame:
        """One row per save: t, step, evals, wall, train/test loss and error, grad_norm."""
        return self._table("saves", SAVE_SCALARS)

    @property
    def flow(self) -> GradientFlow:
        """The run's ODE, rebuilt from its config (data, model, loss), built once."""
        if self._flow is None:
            from .flow import build

            self._flow = build(self.config)
        return self._flow

    def at(self, t: float, exact: bool = False) -> Point:
        """The state and outputs at any time t within the stored run.

        Default: cubic Hermite interpolation between the stored states around t and their
        derivatives (fourth order in the save spacing, no evaluation). ``exact=True``
        replays the integration from the nearest stored state at or before t with the
        run's own method and step size, landing exactly on t: deterministic, the same
        steps as the uninterrupted run.
        """
        times = self.save_times
        if not times[0] <= t <= times[-1]:
            raise ValueError(f"t = {t:g} lies outside the stored run [{times[0]:g}, {times[-1]:g}]")
        i = int(np.searchsorted(times, t, side="right")) - 1
        if times[i] == t:
            state = self.state(i)
        elif exact:
            state = self._replay(i, t)
        else:
            state = hermite(t, float(times[i]), self.state(i), self.derivative(i),
                            float(times[i + 1]), self.state(i + 1), self.derivative(i + 1))
        flow = self.flow
        w = flow.weights(state.to(flow.w0))
        return Point(t, state, flow.outputs(w, flow.x_train).cpu().numpy(), flow.outputs(w, flow.x_test).cpu().numpy())

    def _replay(self, i: int, t: float) -> torch.Tensor:
        from .run import make_method

        dt = float(self.read("saves/dt")[i])
        flow = self.flow
        start = self.state(i).to(flow.w0)
        method = make_method(self.config, flow)
        sol = integrate(flow, start, (float(self.save_times[i]), t), method, save_at=[t],
                        dt=None if np.isnan(dt) else dt)
        return sol.y

    def weights(self, i: int) -> torch.Tensor:
        """The network parameters w at the i-th save (the first half of a momentum state)."""
        flow = self.flow
        return flow.weights(self.state(i).to(flow.w0))

    def kernel(self, i: int, n: int = 100) -> torch.Tensor:
        """Theta(w(t_i)) on the first n train points, computed from the stored state."""
        flow = self.flow
        return ntk(flow.model, self.weights(i), flow.x_train[:n], max_memory=self.config.kernel_memory_mb * 2**20)

    def kernel_change(self, n: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """(times, ||Theta(t) - Theta(0)||_F / ||Theta(0)||_F): from the snapshots taken during
        the run when there are any, else computed now at every save on the first n train points."""
        if self.has("kernel"):
            return self.read("kernel/t"), self.read("kernel/change")
        theta0 = self.kernel(0, n)
        return self.save_times, np.array([relative_change(self.kernel(i, n), theta0) for i in range(len(self))])

    def linearization_gap(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, ||f(w(t)) - f0 - J0 (w(t) - w0)|| / ||f(w(t)) - f0||) on the train set."""
        flow = self.flow
        gaps = [linearization_gap(flow.model, flow.w0, self.weights(i), flow.x_train) for i in range(len(self))]
        return self.save_times, np.array(gaps)

    def curvature(self, i: int = 0) -> Curvature:
        """Curvature of the network manifold along the direction of motion u = dw/dt at the
        i-th save, on the train set: radius R = ||J u||^2 / ||u^T d2f u||, exit time R / ||J u||."""
        flow = self.flow
        u = flow.weights(self.derivative(i).to(flow.w0))
        if float(u.norm()) == 0.0 and flow.momentum:  # momentum starts at rest: use the force
            u = -flow.loss_and_grad(self.weights(i))[1]
        return curvature(flow.model, self.weights(i), u, flow.x_train)

    def t1(self, method: str = "linearization", eps: float = 0.1) -> float:
        """The time training leaves the tangent space; inf when the run ends first (lazy).

        linearization: first t with linearization gap > eps;  kernel: first t with
        ||Theta(t) - Theta(0)|| / ||Theta(0)|| > eps;  curvature: the prediction
        R / ||J u|| at t = 0 (eps unused).
        """
        if method == "curvature":
            return self.curvature(0).exit_time
        if method == "linearization":
            return first_crossing(*self.linearization_gap(), eps)
        if method == "kernel":
            return first_crossing(*self.kernel_change(), eps)
        raise ValueError(f"method = {method!r}: must be linearization, kernel or curvature")

    def summary(self) -> dict[str, Any]:
        """Status, stop reason, and the last save's scalars (t, step, evals, wall, losses,
        errors): reads one row of each table, so a catalog of many runs stays cheap."""
        with self._file() as f:
            n = f["saves/t"].shape[0]
            last = {c: float(f[f"saves/{c}"][n - 1]) for c in SAVE_SCALARS} if n else {}
            run = {k: f[f"run/{k}"][()] for k in ("status", "stop_reason")}
        for c in ("step", "evals"):
            if c in last:
                last[c] = int(last[c])
        return {k: v.decode() for k, v in run.items()} | last


def open_trajectory(path: str | Path) -> Trajectory:
    """Open a stored run for queries (``gflow.open``)."""
    return Trajectory(path)
