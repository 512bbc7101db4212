"""The streaming writer: an observer that writes a run into its HDF5 file as it goes.

Protocol (docs/FORMAT.md): SWMR mode, every dataset created before the first step, saves
committed in groups (their rows appended and flushed before their commit markers
``/saves/t``, then the checkpoint), an exclusive lock beside the file for the writer's
lifetime.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import platform
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from solvers import Observer, SaveRecord, StepRecord, Stop

from ..errors import DiskFull, FileFormatError, GflowError, RunBusy
from ..hessian import top_eigenvalues
from ..kernels import ntk, relative_change
from .format import (
    CENTRAL_SAVE_COLUMNS,
    CHECKPOINT_COLUMNS,
    FORMAT,
    FORMAT_VERSION,
    OPTIONAL_STEP_COLUMNS,
    REASON_BYTES,
    SAVE_SCALARS,
    WRITE_OPTIONS,
    STEP_COLUMNS,
    _first_line,
    append,
    copy_checked,
    create_array,
    create_checkpoint,
    create_table,
    extend,
    open_file,
    open_plain_or_swmr,
    read_checkpoint,
    read_hessian_start,
    repair_truncated,
    state_digest,
    upgrade,
)
from .validate import text

if TYPE_CHECKING:
    from ..flow import GradientFlow


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> str:
    return json.dumps({
        "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
        "h5py": h5py.__version__, "torchdiffeq": _installed_version("torchdiffeq"),
        "gflow": _installed_version("gflow"), "threads": torch.get_num_threads(),
    })


def _installed_version(package: str) -> str:
    """The installed distribution's version, read from its metadata (importing torchdiffeq
    for its ``__version__`` would load SciPy's integrate and optimize into every run)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def w0_digest(w0: torch.Tensor) -> str:
    """SHA-256 of the initial parameters' bytes (as stored in /init/w0)."""
    return hashlib.sha256(np.ascontiguousarray(w0.detach().cpu().numpy()).tobytes()).hexdigest()


def sources(flow: GradientFlow) -> dict[str, dict]:
    """The model, data and loss descriptions a file records (root attributes, JSON)."""
    return {
        "model": {**flow.sources.get("model", {}), "outputs": flow.outputs_k, "n_params": flow.n_params,
                  "w0_sha256": w0_digest(flow.w0)},
        "data": {**flow.sources.get("data", {}), "digest": flow.data.digest(),
                 "x_shape": list(flow.x_train.shape[1:]), "x_dtype": str(flow.x_train.dtype).removeprefix("torch."),
                 "y_dtype": str(flow.y_train.dtype).removeprefix("torch.")},
        "loss": flow.sources.get("loss", {}),
    }


class TrajectoryWriter(Observer):
    """Streams a run into ``path`` in HDF5 SWMR mode, so other processes can read it while
    it grows and a killed run leaves a valid file.

    A save's small rows (outputs, scalars) are staged in memory and its state row written
    at once; staged saves are committed together (:meth:`_commit`: rows, then their
    ``saves/t`` markers, then the checkpoint, each after a flush) at a save that closes its
    step, once the time since the last commit is 1/COMMIT_SHARE times what that commit cost
    (at most STEP_FLUSH_S), and when the run ends: commits take about 1% of a run's time
    and a kill loses at most that much work. Step rows are written with each commit, and at
    least every STEP_FLUSH_S seconds between (a live reader sees the run move). Readers
    count only committed saves; the checkpoint is the end of the step the committing save
    closed. The writer holds an exclusive lock (``<path>.lock``) for its lifetime, so no
    second process can write or resume the same run. ``finish(stop)`` records the final
    status and the step size to resume with. Tables hold what was computed: states,
    outputs and kernels in the run's dtype, scalars in float64. ``lock``: the run's lock
    when the caller holds it already (resume takes it before looking at the file).
    """

    def __init__(self, path: str | Path, flow: GradientFlow, scheduled: Sequence[float] = (), resume: bool = False,
                 overwrite: bool = False, lock: RunLock | None = None) -> None:
        self.flow = flow
        self.path = Path(path)
        self._scheduled = set(scheduled)
        self._with_state = state_indices(flow, len(scheduled))
        self._forwards = 0  # forward passes over the training set for interpolated saves
        self._pending: SaveRecord | None = None  # the state a run stopped at, between save times
        self._rows: list[tuple[float, ...]] = []
        self._flushed = time.monotonic()  # when step rows were last written
        # Saves written since the last commit: their small rows, markers, and the count of
        # rows with no state (the state tables are extended by them at the commit).
        self._staged: dict[str, list[np.ndarray]] = {}
        self._staged_t: list[float] = []
        self._staged_kernel_t: list[float] = []
        self._stateless = 0
        self._unflushed = 0  # bytes of states and kernel snapshots written since the last commit
        self._checkpoint: _Checkpoint | None = None  # the latest save's step end, until the next step
        self._committed, self._commit_cost = time.monotonic(), 0.0
        self._last_row_state = False  # whether the last save row written holds its state
        self._last_row: tuple[torch.Tensor, torch.Tensor | None] | None = None  # see _held
        self._last_save: tuple[float, torch.Tensor] | None = None  # (t, w) of a save with no kernel snapshot
        # Each layer's initial weights and their norm (computed once, not at every save).
        self._w0_layers = [(flow.w0[s], flow.w0[s].norm()) for s in flow.model.layers.values()]
        self._hessian_vectors: np.ndarray | None = None  # the last save's, to start the next Lanczos
        # The central flow stores the top of the spectrum it tracks: two eigenvalues unless asked for more.
        self._hessian_k = flow.cfg.hessian_k or (2 if flow.cfg.flow == "central" else 0)
        self._kernel_x = flow.x_train[: flow.cfg.kernel_n]
        # Hidden pre-activations on the kernel subset at w0, for the representation change.
        hidden = getattr(flow.model, "hidden", None)
        self._hidden0 = hidden(flow.w0, self._kernel_x) if hidden is not None and flow.cfg.kernel_n > 0 else {}
        self._lock = lock or RunLock(self.path)
        try:
            if resume:
                with open_file(self.path) as f:  # again under the lock: another process may have just finished it
                    status = text(f, "run/status", str(self.path))
                if status not in ("running", "stopped"):
                    raise GflowError(f"{self.path}: status {status}; only running (killed) or stopped runs can be resumed")
                self._need(self.path.stat().st_size, "to resume it (resuming rewrites the file)", "nothing changed")
                rewrite_to_checkpoint(self.path, flow.cfg.to_json())
                self.file = h5py.File(self.path, "r+", **WRITE_OPTIONS)
                upgrade(self.file, sources(flow), flow.y0.cpu().numpy())
                self._forwards = _forwards_so_far(self.file, self.path)
                # The next save's Lanczos starts where the uninterrupted run's would: resumed bitwise.
                self._hessian_vectors = read_hessian_start(self.file, (flow.n_params, self._hessian_k))
                if flow.cfg.kernel_n > 0:
                    self._theta0 = torch.from_numpy(self.file["init/theta"][()]).to(flow.w0)
            else:
                self._need(_creation_bytes(flow), "to create it", "no file written")
                if overwrite and self.path.is_file():
                    self.path.unlink()
                # Built under a fresh hidden name, created exclusively ("w-": O_EXCL, never
                # through a link planted there), and given its name only once complete
                # (_publish): a reader never finds a half-made file at the output path.
                self._creating = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}.new")
                try:
                    self.file = h5py.File(self._creating, "w-", **WRITE_OPTIONS)
                except OSError as e:
                    raise GflowError(f"cannot create {self.path}: {_first_line(e)}") from None
                try:
                    self._create(flow)
                except (OSError, RuntimeError) as e:
                    why = _out_of_space(e)
                    if not why:
                        raise
                    self._creating.unlink(missing_ok=True)  # nothing committed yet: leave no half-made file
                    self._creating = None
                    raise DiskFull(f"{why} {self.path} while creating it ({_free(self.path)} free); no file written",
                                   unclean=True) from None
        except BaseException:
            if resume and getattr(self, "file", None) is not None:  # a file found wanting after it was opened
                with contextlib.suppress(Exception):
                    self.file.close()
            self._discard_new()
            self._lock.release()
            raise
        self._broken = False
        self._set_status("running", "")
        self.file.swmr_mode = True
        if self._creating is not None:
            self._publish()
        # Handles looked up once: h5py's name lookup costs more than a small append.
        self._steps = {c: self.file["steps"][c] for c in (*STEP_COLUMNS, *OPTIONAL_STEP_COLUMNS)
                       if c in self.file["steps"]}
        self._saves = {name: self.file["saves"][name] for name in self.file["saves"]}

    _creating: Path | None = None  # the hidden name a new file is built under, until _publish

    def _publish(self) -> None:
        """Give the complete new file its name: a hard link, which fails if the name exists
        (of two processes racing for one output, one wins), then the hidden name removed."""
        assert self._creating is not None
        try:
            os.link(self._creating, self.path)
        except OSError as e:
            if isinstance(e, FileExistsError) or self.path.exists() or self.path.is_symlink():
                self._discard_new()
                self._lock.release()
                raise RunBusy(f"output {self.path} was just created by another process") from None
            os.rename(self._creating, self.path)  # no hard links here: the lock keeps other gflow writers out
        self._creating.unlink(missing_ok=True)
        self._creating = None

    def _discard_new(self) -> None:
        """Close and remove a new file that never got its name."""
        if self._creating is None:
            return
        with contextlib.suppress(Exception):
            self.file.close()
        self._creating.unlink(missing_ok=True)
        self._creating = None

    def _create(self, flow: GradientFlow) -> None:
        f = self.file
        f.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "config": flow.cfg.to_json(),
            "versions": _versions(), "device": str(flow.w0.device), "created": _now(), "n_params": flow.n_params,
        })
        for name, description in sources(flow).items():
            f.attrs[name] = json.dumps(description)
        # Mutable fields are fixed-size datasets, not attributes: SWMR allows rewriting data only.
        run = f.create_group("run")
        create_array(run, "status", shape=(1,), dtype="S16")
        create_array(run, "stop_reason", shape=(1,), dtype=f"S{REASON_BYTES}")
        create_array(run, "next_dt", np.float64(np.nan))
        init = f.create_group("init")
        create_array(init, "w0", flow.w0.cpu().numpy())
        create_array(init, "f0_train", flow.f0_train.cpu().numpy())
        create_array(init, "f0_test", flow.f0_test.cpu().numpy())
        data = f.create_group("data")
        for name in ("train_indices", "test_indices", "classes_train", "classes_test"):
            if getattr(flow.data, name) is not None:
                create_array(data, name, getattr(flow.data, name))
        create_array(data, "y_train", flow.y_train.cpu().numpy())
        create_array(data, "y_test", flow.y_test.cpu().numpy())
        data.attrs["digest"] = flow.data.digest()
        steps = f.create_group("steps")
        for c in STEP_COLUMNS:
            create_table(steps, c)
        if flow.cfg.solver == "exponential":
            create_table(steps, "ritz_max")
        saves = f.create_group("saves")
        for c in SAVE_SCALARS:
            create_table(saves, c)
        dtype = flow.w0.cpu().numpy().dtype
        create_table(saves, "f_train", tuple(flow.f0_train.shape), dtype)
        create_table(saves, "f_test", tuple(flow.f0_test.shape), dtype)
        create_table(saves, "weight_change", (len(flow.model.layers),))
        if self._hidden0:
            create_table(saves, "representation_change", (len(self._hidden0),))
            saves["representation_change"].attrs["layers"] = json.dumps(list(self._hidden0))
        saves.attrs["layers"] = json.dumps(list(flow.model.layers))
        # States and derivatives only at some saves: the other rows are never written, so
        # HDF5 allocates no chunk for them and reads them as the NaN fill value.
        if self._hessian_k > 0:
            create_table(saves, "hessian", (self._hessian_k,))
            create_table(saves, "hessian_products")
        if flow.cfg.flow == "central":
            for c in CENTRAL_SAVE_COLUMNS:
                create_table(saves, c)
        create_table(saves, "state", (len(flow.y0),), dtype, fill=np.nan)
        if flow.cfg.save_derivatives:
            create_table(saves, "dstate", (len(flow.y0),), dtype, fill=np.nan)
        create_checkpoint(f, flow.y0.cpu().numpy(), (flow.n_params, self._hessian_k) if self._hessian_k else None)
        if flow.cfg.kernel_n > 0:
            self._theta0 = self._kernel(flow.w0)
            create_array(init, "theta", self._theta0.cpu().numpy())
            kernel = f.create_group("kernel")
            kernel.attrs["n"] = len(self._kernel_x)
            kernel.attrs["outputs"] = flow.cfg.kernel_outputs
            create_table(kernel, "t")
            create_table(kernel, "change")
            create_table(kernel, "norm")
            create_table(kernel, "theta", tuple(self._theta0.shape), dtype)

    def _set_status(self, status: str, reason: str, next_dt: float = np.nan) -> None:
        run = self.file["run"]
        run["status"][...] = status.encode()
        run["stop_reason"][...] = reason.encode()[:REASON_BYTES]
        run["next_dt"][...] = next_dt

    def _kernel(self, w: torch.Tensor) -> torch.Tensor:
        cfg = self.flow.cfg
        return ntk(self.flow.model, w, self._kernel_x, max_memory=cfg.kernel_memory_mb * 2**20,
                   outputs=cfg.kernel_outputs)

    def _snapshot_kernel(self, w: torch.Tensor) -> None:
        """Append Theta(w) and its change; the caller appends ``kernel/t`` to commit it."""
        theta = self._kernel(w)
        k = self.file["kernel"]
        append(k["change"], np.array([relative_change(theta, self._theta0)]))
        append(k["norm"], np.array([float(theta.norm())]))
        append(k["theta"], theta.cpu().numpy()[None])
        self._unflushed += theta.nbytes + 16

    def on_step(self, record: StepRecord) -> None:
        # A save not committed with its checkpoint is no longer a point to resume from: its
        # state is let go with the step it ended, so that no old state outlives its step.
        self._checkpoint = None
        ev = record.ev
        self._rows.append((
            ev.t, record.dt, float(ev.aux["loss"]), math.sqrt(ev.sq_norm(self.flow.grad_key)),
            record.ratios.get("dgrad", np.nan), record.ratios.get("dout", np.nan), record.ratios.get("error", np.nan),
            record.rejected, record.evals, record.wall, record.ratios.get("ritz_max", np.nan),
        ))
        if time.monotonic() - self._flushed >= STEP_FLUSH_S:  # a live reader sees the run move between saves
            with self._writing():
                self._flush_steps()
                self.file.flush()

    def _flush_steps(self) -> None:
        self._flushed = time.monotonic()
        if self._rows:
            rows = np.array(self._rows, dtype=np.float64)
            for i, c in enumerate((*STEP_COLUMNS, *OPTIONAL_STEP_COLUMNS)):
                if c in self._steps:
                    append(self._steps[c], rows[:, i])
            self._rows = []

    def on_save(self, record: SaveRecord) -> None:
        """A scheduled save becomes a row (and the checkpoint). The final state of a run that
        ends between save times waits for ``finish``: a run that merely stopped (budget,
        signal) keeps it in the checkpoint only, so that resuming it gives the saves of the
        uninterrupted run; a finished or failed run saves it as a row."""
        if self._scheduled and record.t not in self._scheduled:
            self._pending = record
            return
        try:
            self._need(self._save_bytes() + self._staged_bytes(), "for its next save", self._resumable())
        except DiskFull:
            with self._writing():
                self._commit()  # the staged saves had room when their checks passed: keep them
            raise
        with self._writing():
            self._write_save(record, record.index in self._with_state)
            if record.closes_step:
                self._checkpoint = _Checkpoint.at(record, record.dt, self._save_rows(), self._last_row_state,
                                                  self._hessian_vectors)
                elapsed = time.monotonic() - self._committed
                if elapsed >= min(self._commit_cost / COMMIT_SHARE, STEP_FLUSH_S):
                    self._commit()

    def _save_bytes(self) -> int:
        """Bytes one save appends at most (rows, buffered steps, a kernel snapshot, a state, a
        checkpoint with its Hessian eigenvectors)."""
        flow, item = self.flow, self.flow.w0.element_size()
        n = item * (flow.f0_train.numel() + flow.f0_test.numel() + len(flow.y0) * (3 + flow.cfg.save_derivatives))
        n += 8 * flow.n_params * self._hessian_k
        kernel = self.flow.cfg.kernel_n * (flow.outputs_k if flow.cfg.kernel_outputs == "full" else 1)
        return n + 8 * (len(SAVE_SCALARS) + len(flow.model.layers) + len(self._hidden0) + self._hessian_k + 6 + len(STEP_COLUMNS) * (len(self._rows) + 1)) + \
            item * kernel**2

    def _save_rows(self) -> int:
        """Save rows written, committed or staged."""
        return self._saves["t"].shape[0] + len(self._staged_t)

    def _staged_bytes(self) -> int:
        """Bytes the next commit writes: the staged rows and markers, and the states and
        kernel snapshots appended since the last (HDF5 holds them in its caches until a flush)."""
        return sum(row.nbytes for rows in self._staged.values() for row in rows) + \
            8 * (len(self._staged_t) + len(self._staged_kernel_t)) + self._unflushed

    def _resumable(self) -> str:
        return f"the file keeps every complete save: free space and resume it (gflow run --resume {self.path})"

    def _need(self, nbytes: int, what: str, then: str) -> None:
        """Raise DiskFull, before anything is written, unless the disk holding the file has
        room for ``nbytes`` twice over plus 1 MiB (HDF5's chunk indices and metadata grow too):
        a write that fails for lack of space leaves HDF5 unable to close the file."""
        free = _free_bytes(self.path)
        if free < 2 * nbytes + 2**20:
            raise DiskFull(f"no space left on the disk of {self.path} {what} ({_size(free)} free, needs about "
                           f"{_size(2 * nbytes + 2**20)}); {then}")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a write that failed for lack of space into DiskFull (unclean: see its doc)."""
        try:
            yield
        except (OSError, RuntimeError) as e:
            why = _out_of_space(e)
            if not why:
                raise
            self._broken = True
            with contextlib.suppress(OSError):  # best effort: a file limit (EFBIG) forbids it, resume does it then
                repair_truncated(self.path, verify=False)
            raise DiskFull(f"{why} {self.path} ({_free(self.path)} free on its disk); {self._resumable()}",
                           unclean=True) from None

    def _commit(self) -> None:
        """Make the staged saves complete, in three flushes, because HDF5 may write dirty
        metadata in any order: their rows (with the buffered step rows and the checkpoint's
        spare slot); then their markers ``saves/t`` and ``kernel/t``; then the checkpoint's
        switch to that slot. A kill between two leaves the previous commit's saves and
        checkpoint, complete."""
        start = time.monotonic()
        self._flush_steps()
        for name, rows in self._staged.items():
            append(self._saves[name], np.stack(rows))
        self._extend_stateless()
        slot = None if self._checkpoint is None else self._write_checkpoint_slot(self._checkpoint)
        self.file.flush()
        if self._staged_kernel_t:
            append(self.file["kernel/t"], np.array(self._staged_kernel_t))
        if self._staged_t:
            append(self._saves["t"], np.array(self._staged_t))
        self.file.flush()
        if slot is not None:
            self.file["checkpoint/current"][0] = slot
            self.file.flush()
        self._staged, self._staged_t, self._staged_kernel_t, self._checkpoint = {}, [], [], None
        self._unflushed = 0
        self._committed = time.monotonic()
        self._commit_cost = self._committed - start

    def _write_checkpoint_slot(self, point: _Checkpoint) -> int:
        """Write ``point`` into the checkpoint's slot not in use (crash-safe: the caller
        names it current once it is flushed) and return the slot. A state stored in its save
        row is referenced, not copied."""
        ckpt = self.file["checkpoint"]
        current = int(ckpt["current"][0])
        slot = 0 if current < 0 else 1 - current
        state = point.y.detach().cpu().numpy()
        if not point.in_row:
            ckpt["state"][slot] = state
        ckpt["digest"][slot] = state_digest(state)
        values = {"t": point.t, "dt": np.nan if point.dt is None else point.dt, "step": point.steps,
                  "evals": point.evals, "wall": point.wall, "saves": point.saves,
                  "row": point.saves - 1 if point.in_row else -1}
        ckpt["scalars"][slot] = [values[c] for c in CHECKPOINT_COLUMNS]
        if point.hessian is not None and "hessian_vectors" in ckpt:  # absent in a file made before them
            ckpt["hessian_vectors"][slot] = point.hessian
        return slot

    def _stage(self, name: str, row: np.ndarray | float) -> None:
        self._staged.setdefault(name, []).append(np.array(row))  # a copy: a tensor's memory may be reused

    def _extend_stateless(self) -> None:
        """Extend the state tables by the rows staged without a state (never written: HDF5
        reads them as the NaN fill value and allocates no chunk)."""
        if self._stateless:
            for name in ("state", "dstate"):
                if name in self._saves:
                    extend(self._saves[name], self._stateless)
            self._stateless = 0

    def _write_save(self, record: SaveRecord, with_state: bool) -> None:
        """One save row, staged for the next commit (its state, and its kernel snapshot, are
        written at once: they are large). At a state that was evaluated (a step landed on it)
        the loss and the training outputs come from that evaluation; at an interpolated state
        they take a forward pass (no backward; counted in ``forwards``) and the gradient norm
        is read off the interpolated derivative."""
        flow, ev = self.flow, record.ev
        w = flow.weights(record.y)
        if ev is not None:
            f_train, train_loss = ev.aux["f"], float(ev.aux["loss"])
            grad_norm = math.sqrt(ev.sq_norm(flow.grad_key))
        else:
            f_train = flow.outputs(w, flow.x_train)
            self._forwards += 1
            train_loss = flow.loss(f_train, "train") + float(flow.penalty(w))  # the objective L, decay included
            grad_norm = flow.gradient_norm(record.y, record.dydt)
        f_test = flow.outputs(w, flow.x_test)
        change = [float((w[s] - w0).norm() / norm0)
                  for s, (w0, norm0) in zip(flow.model.layers.values(), self._w0_layers)]
        scalars = {
            "t": record.t, "step": record.steps, "evals": record.evals, "wall": record.wall,
            "dt": np.nan if record.dt is None else record.dt,
            "train_loss": train_loss, "train_err": flow.error(f_train, "train"),
            "test_loss": flow.loss(f_test, "test"), "test_err": flow.error(f_test, "test"),
            "grad_norm": grad_norm, "forwards": self._forwards, "interpolated": float(ev is None),
            "has_state": float(with_state),
        }
        saves = self._saves
        self._stage("f_train", f_train.cpu().numpy())
        self._stage("f_test", f_test.cpu().numpy())
        self._stage("weight_change", change)
        if "representation_change" in saves:
            now = flow.model.hidden(w, self._kernel_x)
            self._stage("representation_change", [float((now[name] - z0).norm() / z0.norm())
                                                  for name, z0 in self._hidden0.items()])
        if flow.cfg.flow == "central":
            a = flow.analysis(record.y)
            scalars.update({"central_sigma2": a.sigma2, "central_loss": a.central_loss, "central_k": len(a.x),
                            "central_hvps": flow.products["hvp"], "central_thirds": flow.products["third"]})
        if self._hessian_k > 0:
            spectrum = top_eigenvalues(flow, w, self._hessian_k, flow.cfg.hessian_tol, self._hessian_vectors)
            self._hessian_vectors = spectrum.vectors
            self._stage("hessian", spectrum.values)
            self._stage("hessian_products", float(spectrum.products))
        if with_state:
            self._extend_stateless()
            for name, value in (("state", record.y), ("dstate", record.dydt)):
                if name in saves:
                    append(saves[name], value.detach().cpu().numpy()[None])
                    self._unflushed += value.nbytes
        else:
            self._stateless += 1
        self._last_row_state = with_state
        self._last_row = None if with_state else self._held(record)
        snapshot = self.flow.cfg.kernel_n > 0 and record.index % self.flow.cfg.kernel_every == 0
        if snapshot:
            self._snapshot_kernel(w)
            self._staged_kernel_t.append(record.t)
        if self.flow.cfg.kernel_n > 0:
            self._last_save = None if snapshot else (record.t, w)
        for c, v in scalars.items():
            if c != "t":
                self._stage(c, np.float64(v))
        self._staged_t.append(record.t)

    def _held(self, record: SaveRecord) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What ``_keep_last_state`` may need of a row written without its state: y, and
        dy/dt where derivatives are stored. y gets storage of its own when it shares it (an
        interpolated save's y and dy/dt are two rows of one tensor), so that holding it
        until the next save keeps one state-sized vector alive, not two."""
        y = record.y if record.y.untyped_storage().nbytes() == record.y.nbytes else record.y.clone()
        return y, (record.dydt if "dstate" in self._saves else None)

    def _keep_last_state(self) -> None:
        """The last save row of a run that ends holds its state (the one state every file
        has), written into the row now if the schedule had skipped it."""
        n = self._saves["t"].shape[0]
        if n and not self._last_row_state:
            y, dydt = self._last_row
            self._saves["state"][n - 1] = y.detach().cpu().numpy()
            if dydt is not None:
                self._saves["dstate"][n - 1] = dydt.detach().cpu().numpy()
            self._saves["has_state"][n - 1] = 1.0
            self._last_row_state = True

    def finish(self, stop: Stop, dt: float | None) -> None:
        """Record how the run ended, close the file and release the lock (idempotent). The
        last save gets a kernel snapshot if its schedule skipped it: the kernel at the end of
        training is what a catalog reports."""
        if self._broken:  # HDF5 cannot close it: leave it as a kill would (see DiskFull)
            self._lock.release()
            return
        if self.file:
            with self._writing():
                if self._pending is not None:
                    if stop.status != "stopped":
                        self._write_save(self._pending, True)
                    self._checkpoint = _Checkpoint.at(self._pending, dt, self._save_rows(),
                                                      self._last_row_state and stop.status != "stopped",
                                                      self._hessian_vectors)
                    self._pending = None
                self._commit()
                if stop.status != "stopped":
                    self._keep_last_state()
                if self._last_save is not None and stop.status == "finished":
                    t, w = self._last_save
                    self._snapshot_kernel(w)
                    self.file.flush()
                    append(self.file["kernel/t"], np.array([t]))
                self._flush_steps()
                self._set_status(stop.status, stop.reason, np.nan if dt is None else dt)
                self.file.close()
        self._lock.release()


@dataclass(frozen=True)
class _Checkpoint:
    """What resuming at the end of a save's step needs (see CHECKPOINT_COLUMNS): its state
    (held, not copied, until the commit that writes it or the next step), the step size to
    go on with, the counters, ``saves``, the rows up to it (``in_row``: the last of them
    holds the state), and the last save's Hessian eigenvectors (``hessian``, None without a
    spectrum), which start the next save's Lanczos iteration."""

    t: float
    y: torch.Tensor
    dt: float | None
    steps: int
    evals: int
    wall: float
    saves: int
    in_row: bool
    hessian: np.ndarray | None = None

    @classmethod
    def at(cls, record: SaveRecord, dt: float | None, saves: int, row_has_state: bool,
           hessian: np.ndarray | None = None) -> _Checkpoint:
        """The end of ``record``'s latest accepted step; its state is in the last of the
        ``saves`` rows when that row holds a state and was saved at that very time."""
        last = record.last
        return cls(last.t, last.y, dt, record.steps, record.evals, record.wall, saves,
                   row_has_state and saves > 0 and record.t == last.t, hessian)


_NO_ROOM = {errno.ENOSPC: "no space left on the disk of", errno.EFBIG: "the file size limit (ulimit -f) stopped",
            errno.EDQUOT: "the disk quota is exhausted for"}


STATE_BUDGET = 64 * 2**20
STEP_FLUSH_S = 30.0  # at most this long between writes of step rows, and between commits
COMMIT_SHARE = 0.01
"""The share of a run's time its commits may take: a save that closes its step commits the
staged saves once the time since the last commit is 1/COMMIT_SHARE times what that commit
took. Measured on the default run: a commit costs ~1.5 ms (10 ms at a million parameters,
most of it the checkpoint's state and digest); one per save was 5% of the run's time."""


def state_indices(flow: GradientFlow, scheduled: int) -> set[int]:
    """Which of the ``scheduled`` saves store the full state: ``state_saves`` of them (by
    default as many as fit in STATE_BUDGET bytes, at least 2), spread evenly over the save
    indices (so log-spaced in time, as the saves are), the first and last always."""
    if scheduled < 1:
        return set()
    per_state = len(flow.y0) * flow.w0.element_size() * (1 + flow.cfg.save_derivatives)
    k = flow.cfg.state_saves or max(2, STATE_BUDGET // per_state)
    return {int(i) for i in np.round(np.linspace(0, scheduled - 1, min(k, scheduled)))}


def _forwards_so_far(f: h5py.File, path: Path) -> int:
    """The forward passes of interpolated saves a file to be resumed counted so far (a
    count: a damaged file's NaN or negative value is refused, not carried on)."""
    if not len(f["saves/t"]) or "forwards" not in f["saves"]:
        return 0
    last = float(f["saves/forwards"][-1])
    if not (math.isfinite(last) and last >= 0):
        raise FileFormatError(f"{path}: saves/forwards should count forward passes, found {last:g}; cannot resume")
    return int(last)


def _out_of_space(e: BaseException) -> str | None:
    """What stopped a write that found no room (from h5py's message or the OS error), or None."""
    if isinstance(e, OSError) and e.errno in _NO_ROOM:
        return _NO_ROOM[e.errno]
    return next((why for n, why in _NO_ROOM.items() if f"errno = {n}," in str(e)), None)


def _free_bytes(path: Path) -> int:
    stat = os.statvfs(path.parent)
    return stat.f_bavail * stat.f_frsize


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _free(path: Path) -> str:
    return _size(_free_bytes(path))


def _creation_bytes(flow: GradientFlow) -> int:
    """Bytes a new file takes before its first save: the initial state, outputs, labels
    and (with snapshots) the initial kernel, plus the empty checkpoint's two slots."""
    item = flow.w0.element_size()
    kernel = flow.cfg.kernel_n * (flow.outputs_k if flow.cfg.kernel_outputs == "full" else 1)
    return item * (3 * len(flow.y0) + flow.f0_train.numel() + flow.f0_test.numel() + kernel**2) + \
        8 * (len(flow.y_train) + len(flow.y_test)) * 3


class RunLock:
    """An exclusive advisory lock on ``<path>.lock`` (flock), held while a process writes
    the run; the operating system releases it when the process dies, so a killed run is
    resumable at once and a live one is never written twice.

    The lock file exists only while held: the holder removes it before letting go. So that
    a process which opened the file just before its removal cannot lock the removed file,
    a lock counts only when the path still names the locked file afterwards (else retried)."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = None
        for _ in range(100):
            try:  # never through a link planted at the lock's name (it would create the link's target)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
            except OSError as e:
                why = "it is a symbolic link" if e.errno == errno.ELOOP else e.strerror
                raise GflowError(f"cannot take the lock {self.path} beside {path}: {why}") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise GflowError(f"cannot take the lock {self.path} beside {path}: it is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunBusy(f"{path} is being written by another live process (lock {self.path})") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)  # the holder removed the file between our open and our lock: try again
        raise RunBusy(f"{path}: could not take the lock {self.path}")

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: see the class docstring
            os.close(self._fd)
            self._fd = None


def rewrite_to_checkpoint(path: Path, config: str) -> None:
    """Make ``path`` an appendable copy of itself cut at its checkpoint (or, in a file
    older than version 4, at its last complete save), with the config attribute replaced by
    ``config`` (a resumed run may carry new budgets).

    A killed SWMR writer leaves the file marked open-for-write, which HDF5 refuses to open
    for writing again; a readable copy (written under a fresh hidden name, created
    exclusively, then atomically renamed over the original) clears that, trims what the
    continuation will redo or a kill left half-written (saves past the checkpoint, steps
    past its step count, kernel snapshots after it) and stores every dataset with the
    Fletcher-32 checksum (:func:`copy_checked`).
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.resume")
    try:
        _copy_to_checkpoint(path, tmp, config)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _copy_to_checkpoint(path: Path, tmp: Path, config: str) -> None:
    # "w-" creates the file exclusively (O_EXCL), never through a link planted at its name.
    # The source opens plainly unless a killed writer left it marked open-for-write: in SWMR
    # mode HDF5 retries a metadata block that fails its checksum with growing sleeps, and a
    # damaged stopped file held a resume for many minutes.
    with open_plain_or_swmr(path) as src, h5py.File(tmp, "w-", **WRITE_OPTIONS) as dst:
        copy_checked(src, dst)
        dst.attrs["config"] = config
        checkpoint = read_checkpoint(dst)
        n = dst["saves/t"].shape[0] if checkpoint is None else min(checkpoint["saves"], dst["saves/t"].shape[0])
        for ds in dst["saves"].values():
            ds.resize(n, axis=0)
        last_step = checkpoint["step"] if checkpoint else (int(dst["saves/step"][n - 1]) if n else 0)
        for ds in dst["steps"].values():
            ds.resize(min(last_step, ds.shape[0]), axis=0)
        if "kernel" in dst:
            t_end = checkpoint["t"] if checkpoint else (dst["saves/t"][n - 1] if n else -np.inf)
            keep = int(np.searchsorted(dst["kernel/t"][()], t_end, side="right"))
            for ds in dst["kernel"].values():
                ds.resize(keep, axis=0)
