"""The reader: everything a trajectory file stores, as arrays and tables. Pure I/O.

Opening a file never builds a network nor imports the user's code: the model, data and
loss are known here only by their recorded descriptions. Analysis that needs the model
(kernels of stored states, replay, curvature) lives in :mod:`gflow.trajectory`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ..errors import FileFormatError, GflowError
from .format import (
    CENTRAL_SAVE_COLUMNS,
    OPTIONAL_STEP_COLUMNS,
    SAVE_SCALARS,
    STEP_COLUMNS,
    check,
    committed,
    open_file,
    read_checkpoint,
    sources_of,
    version_of,
)
from .validate import STATUSES, read_data, scalar, text

if TYPE_CHECKING:  # pandas and torch are imported only when a table or a state is read
    import pandas as pd
    import torch
    import xarray as xr


class TrajectoryFile:
    """A stored run, queried lazily: each accessor opens the file, reads what it needs and
    closes it, so a reader holds no handle between queries. Safe to use while the run is
    still being written (HDF5 SWMR): it sees every save completed so far."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = check(self.path)

    def _file(self) -> contextlib.AbstractContextManager[h5py.File]:
        return open_file(self.path)

    @property
    def attrs(self) -> dict[str, Any]:
        """The immutable root attributes: format, config, versions, device, created, n_params,
        and (version 4) the model, data and loss descriptions as JSON."""
        with self._file() as f:
            return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}

    @property
    def n_params(self) -> int:
        """The network's number of parameters: the length of /init/w0 (the root attribute
        ``n_params`` is optional, and checked equal to it when the file is opened)."""
        with self._file() as f:
            return int(f["init/w0"].shape[0])

    @property
    def threads(self) -> int | None:
        """The torch threads to resume the run with: its config's, else the number it was
        created with (recorded in ``versions``; at most this machine's cores, since the file
        is input), None where neither says. The same number keeps a resumed run bitwise
        itself: a vectorised ensemble's batched products round differently at another
        (measured: one save of three members changed when resumed at 2 threads after 1)."""
        if self.config.threads:
            return self.config.threads
        try:
            recorded = json.loads(self.attrs.get("versions", "{}")).get("threads")
        except (TypeError, ValueError, AttributeError):
            return None
        if not isinstance(recorded, int) or isinstance(recorded, bool) or recorded < 1:
            return None
        return min(recorded, os.cpu_count() or 1)

    @property
    def format_version(self) -> int:
        with self._file() as f:
            return version_of(f)

    @property
    def sources(self) -> dict[str, dict[str, Any]]:
        """Where the model, data and loss came from: ``{"model": {...}, "data": {...},
        "loss": {...}}``, each with ``source`` (builtin, factory/loader/reference, or object/
        arrays: Python objects the file cannot rebuild) and what was recorded of it (class,
        parameter names and shapes, digests, references and their arguments)."""
        with self._file() as f:
            return sources_of(f)

    @property
    def status(self) -> str:
        """running, finished, stopped or failed."""
        with self._file() as f:
            return text(f, "run/status", str(self.path), STATUSES)

    @property
    def stop_reason(self) -> str:
        with self._file() as f:
            return text(f, "run/stop_reason", str(self.path))

    def has(self, name: str) -> bool:
        """Whether the file holds the dataset or group ``name`` (e.g. "kernel")."""
        with self._file() as f:
            return name in f

    def read_attr(self, group: str, name: str) -> Any:
        """An attribute of a group (e.g. the data digest), or None when absent."""
        with self._file() as f:
            value = f[group].attrs.get(name) if group in f else None
        return value.item() if isinstance(value, np.generic) else value

    def read(self, name: str) -> np.ndarray:
        """Any dataset by path, e.g. ``read("saves/test_err")``; tables of saves, steps and
        kernel snapshots hold only complete rows."""
        with self._file() as f:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise FileFormatError(f"{self.path}: no dataset /{name}")
            ds = f[name]
            if ds.shape and name.split("/")[0] in ("saves", "steps", "kernel"):
                return read_data(ds, slice(None, committed(f, name)))
            return read_data(ds)

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
            return read_data(f[name], i % n)

    def outputs(self, i: int, split: str = "train") -> np.ndarray:
        """Raw outputs f(w(t_i), x) on ``split`` ("train" or "test") at the i-th save:
        shape (n,) for one output, (n, k) for k."""
        if split not in ("train", "test"):
            raise ValueError(f"split = {split!r}: must be train or test")
        return self._row(f"saves/f_{split}", i)

    @property
    def stored_states(self) -> np.ndarray:
        """Indices of the saves that store the full state (all of them in a file older than
        version 4; a subset, the first and last always, in a newer one: ``state_saves``)."""
        with self._file() as f:
            n = f["saves/t"].shape[0]
            if "has_state" in f["saves"]:
                return np.flatnonzero(read_data(f["saves/has_state"], slice(None, n)) > 0)
            return np.arange(n) if "state" in f["saves"] else np.zeros(0, dtype=int)

    def hessian_spectrum(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, eigenvalues): the top ``hessian_k`` eigenvalues of the loss Hessian at
        every save, shape (saves, k), largest first (the sharpness lambda_max in column 0)."""
        if not self.has("saves/hessian"):
            raise GflowError(f"{self.path}: no Hessian spectrum stored (run with hessian_k > 0, --hessian-k K)")
        return self.save_times, self.read("saves/hessian")

    def hessian_products(self) -> np.ndarray:
        """The Hessian-vector products each save's spectrum took (its cost: each about one
        to two gradient evaluations)."""
        if not self.has("saves/hessian_products"):
            raise GflowError(f"{self.path}: no Hessian spectrum stored (run with hessian_k > 0, --hessian-k K)")
        return self.read("saves/hessian_products")

    def kernel_snapshots(self, last: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(times, kernels): t = 0 and every snapshot the run took, kernels of shape
        (snapshots, K, K) (K = kernel_n, times k for the full kernel of k outputs); with
        ``last``, only the latest (one kernel read, not all of them)."""
        if not self.has("kernel/t"):
            raise GflowError(f"{self.path}: no kernel snapshots stored (run with kernel_n > 0, --kernel-n K)")
        times = self.read("kernel/t")
        if last and len(times):
            with self._file() as f:
                return times[-1:], read_data(f["kernel/theta"], len(times) - 1)[None]
        thetas = self.read("kernel/theta")
        if len(times) and times[0] == 0.0:  # the schedule's first snapshot is the initial kernel
            return times, thetas
        return np.concatenate([[0.0], times]), np.concatenate([self.read("init/theta")[None], thetas])

    def kernel_signatures(self, top: int = 10, last: bool = False) -> pd.DataFrame:
        """Signatures of feature learning at each kernel snapshot (t = 0 first; with
        ``last``, the latest only): columns t,
        alignment (kernel-target alignment with the training labels, :func:`gflow.kernels.alignment`),
        effective_rank (:func:`gflow.kernels.effective_rank`), and lambda_1 ... lambda_top,
        the kernel's top eigenvalues."""
        import pandas as pd
        import torch

        from ..kernels import alignment, effective_rank

        times, thetas = self.kernel_snapshots(last)
        outputs = int(self.sources.get("model", {}).get("outputs", 1))
        y = torch.from_numpy(self.read("data/y_train")[: int(self.read_attr("kernel", "n"))])
        rows = []
        for t, theta in zip(times, thetas):
            theta = torch.from_numpy(theta).to(torch.float64)
            lam = torch.linalg.eigvalsh(theta).flip(0)
            row = {"t": float(t), "alignment": alignment(theta, y, outputs), "effective_rank": effective_rank(lam)}
            row.update({f"lambda_{i + 1}": float(lam[i]) for i in range(min(top, len(lam)))})
            rows.append(row)
        return pd.DataFrame(rows)

    def storage(self) -> dict[str, float]:
        """What the file costs on disk: its size in bytes, its saves, how many of them store
        the state, bytes per save (the size over the saves), and the forward passes made
        for saves at interpolated states."""
        size = self.path.stat().st_size
        n = len(self)
        forwards = self.read("saves/forwards") if self.has("saves/forwards") else np.zeros(0)
        last = float(forwards[-1]) if len(forwards) else 0.0
        return {"bytes": size, "saves": n, "states": len(self.stored_states),
                "bytes_per_save": size / n if n else math.nan,
                "forwards": int(last) if math.isfinite(last) else math.nan}  # a damaged file's NaN stays NaN

    def _stored(self, name: str, i: int) -> np.ndarray:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"save index {i} out of range for {n} saves")
        if i % n not in set(self.stored_states.tolist()):
            raise FileFormatError(f"{self.path}: save {i % n} (t = {self.save_times[i]:g}) stores no state; states are "
                                  f"kept at {len(self.stored_states)} of {n} saves (config state_saves): "
                                  "gflow.open(path).at(t, exact=True) replays to it")
        return self._row(name, i)

    def state(self, i: int) -> torch.Tensor:
        """The flat ODE state at the i-th save (w, or (w, v) for momentum), where stored."""
        import torch  # imported here: reading a file's tables never loads torch

        return torch.from_numpy(self._stored("saves/state", i))

    def weights(self, i: int) -> torch.Tensor:
        """The network parameters w at the i-th save, from its stored state (its first
        ``n_params`` numbers: a momentum state is (w, v)); no network needed. A save that
        stores no state is replayed by :meth:`gflow.Trajectory.weights`, which needs the network."""
        return self.state(i)[: self.n_params]

    def parameters(self, i: int) -> dict[str, torch.Tensor]:
        """The network's parameter tensors at the i-th save, by name and shaped as the file
        records them (``sources["model"]["parameters"]``); no network needed."""
        recorded = self.sources["model"].get("parameters") or []
        sizes = [math.prod(shape) for _, shape in recorded]
        w = self.weights(i)
        if sum(sizes) != len(w):
            raise GflowError(f"{self.path}: the recorded parameter shapes do not add up to the {len(w)} weights")
        return {name: t.view(shape) for (name, shape), t in zip(recorded, w.split(sizes))}

    def to_xarray(self, states: bool = True) -> xr.Dataset:
        """The run as an ``xarray.Dataset`` (``pip install 'gflow[xarray]'``): outputs, tables,
        states at stored saves and kernels, with coordinates t, sample, output, parameter
        (:func:`gflow.store.export.to_xarray`)."""
        from .export import to_xarray

        return to_xarray(self, states)

    def derivative(self, i: int) -> torch.Tensor:
        """dy/dt at the i-th save, where stored (``save_derivatives``)."""
        if not self.has("saves/dstate"):
            raise FileFormatError(f"{self.path}: no derivatives stored (run with save_derivatives = true)")
        import torch

        return torch.from_numpy(self._stored("saves/dstate", i))

    def _table(self, group: str, columns: Sequence[str]) -> pd.DataFrame:
        import pandas as pd

        with self._file() as f:
            n = committed(f, f"{group}/{columns[0]}")
            # A column added by a later format version reads as NaN in an older file.
            rows = slice(None, n)
            return pd.DataFrame({c: read_data(f[f"{group}/{c}"], rows) if c in f[group] else np.full(n, np.nan)
                                 for c in columns})

    @property
    def steps(self) -> pd.DataFrame:
        """One row per accepted step: t, dt, loss, grad_norm, ratios, rejected, evals, wall, and
        ``ritz_max`` for the exponential method (its Krylov space's top Ritz value of -J: for
        gradient flow, an estimate of the sharpness lambda_max at the step's start, free)."""
        with self._file() as f:
            extra = tuple(c for c in OPTIONAL_STEP_COLUMNS if c in f["steps"])
        return self._table("steps", (*STEP_COLUMNS, *extra))

    @property
    def saves(self) -> pd.DataFrame:
        """One row per save: t, step, evals, wall, train/test loss and error, grad_norm; for a
        central flow also ``central_sigma2`` (tr X, the predicted variance of gradient
        descent's oscillation), ``central_loss`` (its predicted time-averaged loss),
        ``central_k`` (eigenvalues at the edge), ``central_hvps`` and ``central_thirds``
        (the field's cumulative Hessian-vector and third-derivative products)."""
        with self._file() as f:
            extra = tuple(c for c in CENTRAL_SAVE_COLUMNS if c in f["saves"])
        return self._table("saves", (*SAVE_SCALARS, *extra))

    def checkpoint(self) -> dict[str, Any] | None:
        """Where a continuation starts: the last accepted state on disk (``state``, a tensor)
        with its time ``t``, the step size ``dt`` to go on with, the counters ``step``,
        ``evals``, ``wall`` and ``saves`` (save rows written before it). For a run that stopped
        between save times it lies past the last save. None for a file older than version
        4, whose last save is its checkpoint."""
        with self._file() as f:
            values = read_checkpoint(f)
        if values is not None:
            import torch

            values["state"] = torch.from_numpy(values["state"])
        return values

    def stored_kernel_change(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, ||Theta(t) - Theta(0)||_F / ||Theta(0)||_F) of the snapshots taken during
        the run (empty arrays when it took none)."""
        if not self.has("kernel/t"):
            return np.zeros(0), np.zeros(0)
        return self.read("kernel/t"), self.read("kernel/change")

    def summary(self) -> dict[str, Any]:
        """Status, stop reason, how far the run got (t, step, evals, wall: its latest step on
        disk, past the last save for a live run or one stopped between save times) with the
        training loss there, and the last save's errors and test loss (at ``saved_t`` when
        that is earlier than t). Reads one row of each table, so a catalog of many runs
        stays cheap."""
        with self._file() as f:
            n = f["saves/t"].shape[0]
            last = {c: float(read_data(f[f"saves/{c}"], n - 1)) for c in SAVE_SCALARS} if n else {}
            run = {"status": text(f, "run/status", str(self.path), STATUSES),
                   "stop_reason": text(f, "run/stop_reason", str(self.path))}
            if "checkpoint" in f and n:
                slot = int(scalar(f, "checkpoint/current", str(self.path), "if"))
                if slot >= 0:
                    scalars = read_data(f["checkpoint/scalars"], slot)[:5].tolist()
                    reached = dict(zip(("t", "dt", "step", "evals", "wall"), scalars))
                    if reached["t"] > last["t"]:
                        last.update({k: reached[k] for k in ("t", "step", "evals", "wall")})
            steps = committed(f, "steps/t") if "steps" in f else 0
            if n and steps:
                # The latest accepted step on disk (a live run flushes its rows every 30 s, a
                # stopped one at its end) gives t and the training loss together; errors and
                # test metrics stay those of the last save (``saved_t``).
                saved_t = float(read_data(f["saves/t"], n - 1))
                row = {c: float(read_data(f[f"steps/{c}"], steps - 1)) for c in ("t", "loss", "evals", "wall")}
                if row["t"] > saved_t and steps >= last["step"]:
                    last.update(t=row["t"], step=steps, evals=row["evals"], wall=row["wall"], train_loss=row["loss"],
                                saved_t=saved_t)
        for c in ("step", "evals"):
            if c in last:
                last[c] = int(last[c])
        return run | last
