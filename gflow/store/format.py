"""The HDF5 trajectory format: its names, versions, checks and upgrades (docs/FORMAT.md).

Everything here is about the file, not about networks: the writer and the reader share
these names and helpers, and nothing here imports a model or user code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..config import RunConfig
from ..errors import FileFormatError
from .validate import (
    check_description,
    check_schema,
    check_structure,
    config_of,
    json_attribute,
    read_data,
    scalar,
    shown,
)

FORMAT = "gflow-trajectory"
FORMAT_VERSION = 5
# Version 2 lacks /steps/error_ratio (read as NaN); versions 2 and 3 lack the model, data
# and loss descriptions of version 4 (read as the built-in ones their config names);
# versions before 5 lack the checksums (Fletcher-32) and the checkpoint's digest. All are
# upgraded in place on resume.
READ_VERSIONS = (2, 3, 4, 5)
REASON_BYTES = 512

STEP_COLUMNS = ("t", "dt", "loss", "grad_norm", "dgrad_ratio", "dout_ratio", "error_ratio", "rejected", "evals", "wall")
ADDED_IN_3 = ("steps/error_ratio",)
# Written only by the methods that measure them (the exponential method's top Ritz value).
OPTIONAL_STEP_COLUMNS = ("ritz_max",)
SAVE_SCALARS = ("t", "step", "evals", "wall", "dt", "train_loss", "train_err", "test_loss", "test_err", "grad_norm",
                "forwards", "interpolated", "has_state")
ADDED_IN_4 = ("saves/forwards", "saves/interpolated", "saves/has_state")
# Written only by the central flow (gflow.central): tr X, the predicted time-averaged loss,
# the number of eigenvalues at the edge, and the cumulative Hessian-vector products and
# third-derivative products of its vector field (in the field's own evaluations).
CENTRAL_SAVE_COLUMNS = ("central_sigma2", "central_loss", "central_k", "central_hvps", "central_thirds")
REQUIRED = (
    "run/status", "run/stop_reason", "run/next_dt", "init/w0", "init/f0_train", "init/f0_test", "data/y_train", "data/y_test",
    *(f"steps/{c}" for c in STEP_COLUMNS), *(f"saves/{c}" for c in SAVE_SCALARS),
    "saves/f_train", "saves/f_test", "saves/weight_change",
)
# Root attributes holding JSON descriptions (version 4): where the model, data and loss came from.
SOURCES = ("model", "data", "loss")
# /checkpoint (version 4): the last accepted state on disk and what continuing from it needs,
# in two slots written alternately; /checkpoint/current names the valid one (-1: none yet).
CHECKPOINT_COLUMNS = ("t", "dt", "step", "evals", "wall", "saves", "row")


# A table of scalars rewrites its last chunk at every flush, committed rows with the new. A
# SIGKILL inside that write can tear it where it crosses a page (the kernel copies a write
# page by page and stops between pages for a fatal signal), and the torn chunk then fails
# its checksum, committed rows and all: seen about once in three runs of the twenty-kills
# test with 1024-row (8 KiB) chunks. 511 rows of 8 bytes and the 4-byte checksum fit one
# 4 KiB page, and WRITE_OPTIONS aligns every allocation of 2 KiB or more to a page, so the
# rewrite is one page: old or new, never torn. Rows written once (a state, the outputs of
# a save) are never rewritten and are committed only after they are on disk.
PAGE = 4096
SCALAR_CHUNK_ROWS = (PAGE - 4) // 8
WRITE_OPTIONS = {"libver": "latest", "alignment_threshold": PAGE // 2, "alignment_interval": PAGE}


def create_table(group: h5py.Group, name: str, row: tuple[int, ...] = (), dtype: Any = "f8",
                 fill: float | None = None) -> None:
    """An extendable dataset of rows of shape ``row`` (() for scalars), empty; rows never
    written read as ``fill``. Every chunk carries HDF5's Fletcher-32 checksum, verified on
    each read."""
    # HDF5 chunks must be non-empty and fit fixed dimensions; a row with a zero-size
    # dimension (no test split) gets unlimited trailing dimensions and unit chunks.
    empty = any(n == 0 for n in row)
    maxshape = (None, *((None,) * len(row) if empty else row))
    chunks = (SCALAR_CHUNK_ROWS,) if not row else (1, *(max(n, 1) for n in row))
    # No compression: float64 parameters and outputs compress by a few percent at best,
    # and gzip on a 26,500-parameter state costs ~6 ms per row (measured), 5% of a run.
    group.create_dataset(name, shape=(0, *row), maxshape=maxshape, dtype=dtype, chunks=chunks, fillvalue=fill,
                         fletcher32=True)


def create_array(group: h5py.Group, name: str, data: Any = None, shape: tuple[int, ...] | None = None,
                 dtype: Any = None) -> h5py.Dataset:
    """A fixed-size dataset (``data``, or ``shape`` and ``dtype``) with the Fletcher-32
    checksum: chunked, since HDF5 checksums chunks; a single value is stored as shape (1,)
    (HDF5 cannot chunk a scalar), an empty array plainly (nothing to check)."""
    if data is not None:
        data = np.asarray(data)
        shape, dtype = data.shape, data.dtype
        if data.ndim == 0:
            data, shape = data.reshape(1), (1,)
    assert shape is not None
    if 0 in shape:
        return group.create_dataset(name, shape=shape, dtype=dtype, data=data)
    return group.create_dataset(name, shape=shape, dtype=dtype, data=data, chunks=True, fletcher32=True)


def state_digest(state: np.ndarray) -> bytes:
    """SHA-256 (hex) of a state's bytes: the checkpoint's, verified before it is resumed."""
    return hashlib.sha256(np.ascontiguousarray(state).data).hexdigest().encode()  # no copy of the bytes


def append(ds: h5py.Dataset, rows: np.ndarray) -> None:
    """Extend ``ds`` along its first axis by ``rows`` (same trailing shape).

    Written through h5py's low-level API: the high-level resize and slice assignment
    spend ~0.17 ms of Python per call, three times the write itself, and a save appends
    ~25 rows (measured: 3% of the default run's wall time, 1% this way)."""
    rows = np.ascontiguousarray(rows, dtype=ds.dtype)
    if rows.size == 0:
        ds.resize(ds.shape[0] + rows.shape[0], axis=0)
        return
    dsid = ds.id
    n = dsid.shape[0]
    dsid.set_extent((n + rows.shape[0], *rows.shape[1:]))
    target = dsid.get_space()
    target.select_hyperslab((n,) + (0,) * (rows.ndim - 1), rows.shape)
    dsid.write(h5py.h5s.create_simple(rows.shape), target, rows)


def read_checkpoint(f: h5py.File) -> dict[str, Any] | None:
    """The valid checkpoint slot as a dict (CHECKPOINT_COLUMNS, and ``state``: the state's
    array, read from the save row it names when ``row`` >= 0), or None (none written yet, a
    file older than version 4, or a checkpoint ahead of the committed saves: a damaged file,
    whose last save serves instead). The state is checked against the slot's digest
    (version 5): a mismatch is a FileFormatError naming the slot."""
    if "checkpoint" not in f:
        return None
    slot = int(scalar(f, "checkpoint/current", f.filename, "if"))
    if slot < 0:
        return None
    values = dict(zip(CHECKPOINT_COLUMNS, read_data(f["checkpoint/scalars"], slot).tolist()))
    for k in ("step", "evals", "saves", "row"):
        values[k] = int(values[k])
    row = values["row"]
    if values["saves"] > f["saves/t"].shape[0]:  # ahead of the committed saves: not a file a writer left
        return None
    values["state"] = read_data(f["saves/state"], row) if row >= 0 else read_data(f["checkpoint/state"], slot)
    if "digest" in f["checkpoint"]:
        stored = read_data(f["checkpoint/digest"], slot)
        if state_digest(values["state"]) != stored:
            where = f"/saves/state row {row}" if row >= 0 else f"/checkpoint/state slot {slot}"
            raise FileFormatError(f"{f.filename}: the checkpoint's state ({where}) does not match its SHA-256 digest "
                                  f"(/checkpoint/digest slot {slot}): damaged or edited file")
    return values


def extend(ds: h5py.Dataset, rows: int) -> None:
    """Grow ``ds`` by ``rows`` rows without writing them: no chunk is allocated, and they
    read as the dataset's fill value."""
    dsid = ds.id
    shape = dsid.shape
    dsid.set_extent((shape[0] + rows, *shape[1:]))


def committed(f: h5py.File, name: str) -> int:
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


@contextmanager
def open_file(path: Path) -> Iterator[h5py.File]:
    """Open for reading, also while a SWMR writer appends, after checking its structure
    (:func:`gflow.store.validate.check_structure`: no links, no external or virtual storage,
    no filter plugins, no size the file cannot back); HDF5's low-level errors on a damaged
    file (a failed checksum among them) become one FileFormatError naming the file.

    A closed file is opened plainly, so HDF5 checks it whole (end of file, checksums) and
    fails fast; only a file marked open-for-write (a live or killed run) is opened in SWMR
    mode, whose reader retries failed checksums for a while, expecting a writer to fix them.
    """
    if path.exists() and not path.is_file():
        raise FileFormatError(f"{path}: not a file (a trajectory is one HDF5 file)")
    try:
        with _checked_handle(path) as f:
            yield f
    except (OSError, KeyError, RuntimeError, ValueError) as e:
        if isinstance(e, FileNotFoundError) and not path.exists():
            raise FileFormatError(f"{path}: no such file") from None
        raise FileFormatError(f"{path}: not an HDF5 file, or truncated or damaged ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


# Identities (device, inode, size, modification time) of the files whose structure this
# process has checked: a file is walked again only when it changed (a live run grows).
_CHECKED: dict[tuple[int, int, int, int], None] = {}
_CHECKED_MAX = 4096


def _checked_handle(path: Path) -> h5py.File:
    """An open handle on ``path`` whose structure has been checked. The walk runs in a
    handle of its own, closed after it: in SWMR mode HDF5 caches the metadata the walk read,
    and a table seen through that cache could lag the rows committed since. A file that
    changes between the walk and the next open (a live run) is walked again, at most
    three times; the last walked handle serves then."""
    for _ in range(3):
        f = open_plain_or_swmr(path)
        try:
            if _check_structure_once(f, path):
                return f
        except BaseException:
            f.close()
            raise
        f.close()
    f = open_plain_or_swmr(path)
    try:
        _check_structure_once(f, path)
    except BaseException:
        f.close()
        raise
    return f


def _check_structure_once(f: h5py.File, path: Path) -> bool:
    """check_structure, unless this very file (by the identity of the open descriptor, not
    the path) was checked unchanged before; whether it had been."""
    st = os.fstat(f.id.get_vfd_handle())
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _CHECKED:
        return True
    check_structure(f, str(path), st.st_size)
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.pop(next(iter(_CHECKED)))
    _CHECKED[key] = None
    return False


TRUNCATION_WAIT_S = 0.2


def open_plain_or_swmr(path: Path) -> h5py.File:
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
            if "truncated file" not in str(e):
                raise
            if time.monotonic() > deadline:
                # A writer whose write found no room leaves its file marked open-for-write
                # and short of its recorded end; its complete saves lie in the part on disk.
                block = _superblock(path)
                if block is not None and block[1]:
                    return h5py.File(path, "r", swmr=True)
                raise
            time.sleep(0.01)


def _superblock(path: Path) -> tuple[int, bool] | None:
    """(end-of-file address, open-for-write flag) from a version 2 or 3 HDF5 superblock (what
    ``libver="latest"`` writes: signature, version, sizes, consistency flags at byte 11, then
    base, extension and end-of-file addresses at bytes 12, 20 and 28), read as plain bytes so
    that it works beside a broken HDF5 handle; None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(48)
    except OSError:
        return None
    if len(head) < 36 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3) or head[9] != 8:
        return None
    return int.from_bytes(head[28:36], "little"), bool(head[11] & 1)


def repair_truncated(path: Path, verify: bool = True) -> bool:
    """Extend ``path`` to the end of file its superblock records, when a write that ran out
    of space left it shorter (HDF5 then refuses to open it plainly, though every complete
    save lies in the part on disk): the missing tail becomes a hole of zeros, which no
    complete save refers to. With ``verify``, undone unless the file then opens. Only for a
    file no live writer holds (under the run's lock, or by the writer whose write failed).
    Returns whether the file was extended."""
    block = _superblock(path)
    size = path.stat().st_size
    if block is None or block[0] <= size:
        return False
    try:
        os.truncate(path, block[0])
        if verify:
            h5py.File(path, "r", swmr=True).close()
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.truncate(path, size)
        return False


def version_of(f: h5py.File) -> int:
    try:
        return int(f.attrs.get("format_version", -1))
    except (TypeError, ValueError):
        return -1


def check(path: Path) -> RunConfig:
    """The run's config; FileFormatError unless ``path`` is a complete gflow trajectory we
    can read, every attribute and dataset the reader uses checked
    (:mod:`gflow.store.validate`)."""
    if not path.exists():
        raise FileFormatError(f"{path}: no such file")
    with open_file(path) as f:
        found = f.attrs.get("format")
        if not isinstance(found, str) or found != FORMAT:  # an array's != would be an array
            raise FileFormatError(f"{path}: not a gflow trajectory (format attribute {shown(found)})")
        version = version_of(f)
        if version not in READ_VERSIONS:
            raise FileFormatError(
                f"{path}: trajectory format version {version}; this gflow reads versions "
                f"{', '.join(map(str, READ_VERSIONS))}" + (" (upgrade gflow)" if version > FORMAT_VERSION else "")
            )
        for name in REQUIRED:
            if version < 3 and name in ADDED_IN_3 or version < 4 and name in ADDED_IN_4:
                continue
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise FileFormatError(f"{path}: missing dataset /{name} (damaged or incomplete file)")
        try:
            if version >= 4:
                for name in SOURCES:
                    check_description(name, json_attribute(f.attrs, name, str(path)), str(path))
            cfg = config_of(f, str(path))
            check_schema(f, str(path), cfg)
        except (TypeError, IndexError, AttributeError, RecursionError, ArithmeticError) as e:  # what no check foresaw
            raise FileFormatError(f"{path}: damaged ({type(e).__name__}: {_first_line(e)})") from None
        return cfg


def sources_of(f: h5py.File) -> dict[str, dict[str, Any]]:
    """The model, data and loss descriptions; a file older than version 4 ran gflow's own
    network, data and loss, which its config names."""
    if version_of(f) >= 4:
        return {name: json_attribute(f.attrs, name, f.filename) for name in SOURCES}
    config = json_attribute(f.attrs, "config", f.filename)
    return {
        "model": {"source": "builtin", "arch": config.get("arch", "fc")},
        "data": {"source": "builtin", "dataset": config.get("dataset", "digits")},
        "loss": {"source": "builtin", "name": config.get("loss", "softhinge")},
    }


def create_checkpoint(f: h5py.File, state: np.ndarray, hessian: tuple[int, int] | None = None) -> None:
    """The empty /checkpoint group for states like ``state`` (see CHECKPOINT_COLUMNS), with
    a digest per slot (version 5) and, for a run that stores the Hessian's top k
    eigenvalues (``hessian`` = (parameters, k)), the eigenvectors that start the next
    save's Lanczos iteration."""
    checkpoint = f.create_group("checkpoint")
    create_array(checkpoint, "current", np.int64(-1))
    create_array(checkpoint, "scalars", np.full((2, len(CHECKPOINT_COLUMNS)), np.nan))
    checkpoint.create_dataset("state", shape=(2, len(state)), dtype=state.dtype, chunks=(1, max(len(state), 1)),
                              fletcher32=True)
    create_array(checkpoint, "digest", shape=(2,), dtype="S64")
    if hessian is not None:
        checkpoint.create_dataset("hessian_vectors", shape=(2, *hessian), dtype=np.float64, chunks=(1, *hessian),
                                  fletcher32=True, fillvalue=np.nan)


def read_hessian_start(f: h5py.File, shape: tuple[int, int]) -> np.ndarray | None:
    """The current checkpoint slot's Hessian eigenvectors (``shape``: parameters x k), where
    the file has them and they were written; else None (a cold start). Vectors of another
    shape are a FileFormatError."""
    if "checkpoint" not in f or "hessian_vectors" not in f["checkpoint"]:
        return None
    stored = f["checkpoint/hessian_vectors"]
    if stored.shape != (2, *shape) or stored.dtype.kind != "f":
        raise FileFormatError(f"{f.filename}: /checkpoint/hessian_vectors should be floating point of shape "
                              f"{(2, *shape)} (the run's parameters and hessian_k), found {stored.dtype} {stored.shape}")
    slot = int(scalar(f, "checkpoint/current", f.filename, "if"))
    vectors = read_data(stored, slot) if slot >= 0 else None
    return vectors if vectors is not None and np.isfinite(vectors).all() else None


def upgrade(f: h5py.File, sources: dict[str, dict[str, Any]], state: np.ndarray) -> None:
    """Bring a file of an older version opened for resuming to version 5. A version-2
    file's earlier steps get NaN error ratios (they were not recorded); a version-2 or -3
    file's saves get the columns of version 4 (no forward passes, none interpolated, a state
    at each), the model, data and loss descriptions of the run's rebuilt problem, and an
    empty checkpoint for states like ``state``; a version-4 checkpoint gets its digests. (The
    checksums came with the copy resuming makes: :func:`copy_checked`.) Runs before SWMR
    mode, which forbids new datasets and attributes."""
    version = version_of(f)
    if version >= FORMAT_VERSION:
        return
    if version < 3:
        n = committed(f, "steps/t")
        for name in ADDED_IN_3:
            group, column = name.split("/")
            create_table(f[group], column)
            append(f[name], np.full(n, np.nan))
    if version < 4:
        n = committed(f, "saves/t")
        for name, value in zip(ADDED_IN_4, (0.0, 0.0, 1.0)):  # no forwards, no interpolation, a state at every save
            create_table(f["saves"], name.split("/")[1])
            append(f[name], np.full(n, value))
        for name in SOURCES:
            f.attrs[name] = json.dumps(sources[name])
        create_checkpoint(f, state)
    elif "digest" not in f["checkpoint"]:
        checkpoint = read_checkpoint(f)
        digests = create_array(f["checkpoint"], "digest", shape=(2,), dtype="S64")
        if checkpoint is not None:
            digests[int(scalar(f, "checkpoint/current", f.filename, "if"))] = state_digest(checkpoint["state"])
    f.attrs["format_version"] = FORMAT_VERSION


# The attributes the format defines, by object: a copy keeps these and nothing else.
ATTRIBUTES = {"/": ("format", "format_version", "config", "versions", "device", "created", "n_params", *SOURCES),
              "/data": ("digest",), "/saves": ("layers",), "/saves/representation_change": ("layers",),
              "/kernel": ("n", "outputs")}


def copy_checked(src: h5py.Group, dst: h5py.Group) -> None:
    """Copy every object of ``src`` into ``dst`` as version 5 stores it: chunked datasets
    keep their shape, chunks, fill value and sparsity (only the chunks written are copied)
    and gain the Fletcher-32 checksum; fixed ones become checksummed arrays
    (:func:`create_array`), single values shape (1,). Of the attributes, those the format
    defines (ATTRIBUTES) are copied; one that cannot be written back as it was read (text
    that is not UTF-8) is a FileFormatError."""
    _copy_attributes(src, dst)
    for name, obj in src.items():
        if isinstance(obj, h5py.Group):
            copy_checked(obj, dst.create_group(name))
            continue
        if obj.chunks is None:
            new = create_array(dst, name, read_data(obj))
        else:
            new = dst.create_dataset(name, shape=obj.shape, maxshape=obj.maxshape, chunks=obj.chunks, dtype=obj.dtype,
                                     fillvalue=obj.fillvalue, fletcher32=True)
            try:  # the chunk index is metadata: a flipped bit there fails its checksum (RuntimeError)
                offsets = [obj.id.get_chunk_info(i).chunk_offset for i in range(obj.id.get_num_chunks())]
            except (OSError, RuntimeError) as e:
                raise FileFormatError(f"{src.file.filename}: {obj.name}'s chunk index cannot be read: a checksum "
                                      f"mismatch or damaged data ({_first_line(e)})") from None
            for offset in offsets:
                where = tuple(slice(o, min(o + c, n)) for o, c, n in zip(offset, obj.chunks, obj.shape))
                new[where] = read_data(obj, where)
        _copy_attributes(obj, new)


def _copy_attributes(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    for key in ATTRIBUTES.get(src.name, ()):
        if key in src.attrs:
            try:
                dst.attrs[key] = src.attrs[key]
            except (UnicodeError, TypeError, ValueError):
                raise FileFormatError(f"{src.file.filename}: attribute {key!r} of {src.name} is not valid text "
                                      "(damaged file)") from None
