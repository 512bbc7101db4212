"""What a reader trusts and checks in a trajectory file (docs/FORMAT.md, "Files from others").

A trajectory file is input from whoever made it: a colleague, a paper's supplement, a
public bucket. Before gflow uses anything in it:

* **Structure.** Every link is a hard link to an object inside the file: no soft, external
  or user-defined links. No dataset keeps its bytes in another file (external storage) or
  is assembled from other files (a virtual dataset), and every filter is one HDF5 has built
  in (Fletcher-32, deflate, shuffle), so reading never loads a filter plugin. A file thus
  never makes gflow read or write another file.
* **Sizes.** No dataset or attribute declares more bytes than the file can back (four times
  its size plus 1 MiB; the tables a run leaves sparse, its states, are bounded by the
  parameter count instead), and the file holds at most MAX_OBJECTS objects: nothing is
  allocated from a declared size before it is checked.
* **Schema.** Every attribute and dataset the reader uses has the type, shape, dtype and
  range the format gives it, with the sizes taken from the file's own records (N from
  ``/init/w0``, n from ``/init/f0_train``, D from N and the config's flow, K from
  ``/kernel``'s attributes, S from ``/saves/t``).

Anything else is one :class:`FileFormatError` naming the path inside the file and what was
expected. Nothing here imports user code or builds a network.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from ..config import RunConfig
from ..errors import FileFormatError, GflowError

STATUSES = ("running", "finished", "stopped", "failed")
# Filters HDF5 has built in; any other filter id names a plugin that HDF5 would look for
# on its plugin path and load: code chosen by the file.
BUILTIN_FILTERS = {h5py.h5z.FILTER_FLETCHER32: "fletcher32", h5py.h5z.FILTER_DEFLATE: "deflate",
                   h5py.h5z.FILTER_SHUFFLE: "shuffle"}
MAX_OBJECTS = 10_000  # gflow writes about 60
MAX_ATTRIBUTE_BYTES = 16 * 2**20
# Tables the writer leaves sparse (unwritten rows take no space): bounded by the schema.
SPARSE = ("saves/state", "saves/dstate", "checkpoint/state")


def check_structure(f: h5py.File, where: str, size: int) -> None:
    """Links, storage, filters, dtypes and declared sizes of every object (module docstring).
    Walks the file with HDF5's low-level link iteration, which never follows a link."""
    bound = 4 * size + 2**20
    links: list[tuple[str, int]] = []

    # h5py's visitor runs inside HDF5's iteration, which an exception must not cross: it
    # only collects, and returning a value ends the walk.
    def collect(name: bytes, info: Any) -> bool | None:
        links.append((name.decode(errors="replace"), info.type))
        return True if len(links) > MAX_OBJECTS or info.type != h5py.h5l.TYPE_HARD else None

    f.id.links.visit(collect, info=True)
    if len(links) > MAX_OBJECTS:
        raise FileFormatError(f"{where}: holds more than {MAX_OBJECTS} objects; a trajectory file holds about 60")
    problem = _check_attributes(f.id, "")
    for name, kind in links:
        if problem:
            break
        if kind != h5py.h5l.TYPE_HARD:
            what = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link"}.get(
                kind, "a user-defined link")
            problem = (f"/{name} is {what}; a trajectory file holds only its own objects, no links (a link could "
                       "make gflow read or write another file)")
            break
        try:
            obj = h5py.h5o.open(f.id, name.encode())
            problem = _check_attributes(obj, name) or (
                _check_storage(obj, name, bound) if isinstance(obj, h5py.h5d.DatasetID) else None)
        except (OSError, KeyError, RuntimeError, ValueError, TypeError) as e:  # HDF5 cannot describe it: damage
            problem = f"/{name} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    if problem:
        raise FileFormatError(f"{where}: {problem}")


def _check_attributes(obj: Any, name: str) -> str | None:
    for i in range(h5py.h5a.get_num_attrs(obj)):
        aid = h5py.h5a.open(obj, index=i)
        nbytes = math.prod(aid.shape or ()) * aid.dtype.itemsize
        if nbytes > MAX_ATTRIBUTE_BYTES:
            return (f"attribute {aid.name.decode(errors='replace')!r} of /{name} declares {nbytes} bytes; at most "
                    f"{MAX_ATTRIBUTE_BYTES} are read")
    return None


def _check_storage(ds: h5py.h5d.DatasetID, name: str, bound: int) -> str | None:
    dcpl = ds.get_create_plist()
    if dcpl.get_layout() == h5py.h5d.VIRTUAL:
        return (f"/{name} is a virtual dataset (its data would come from other files); a trajectory file stores its "
                "own data")
    if dcpl.get_external_count():
        return (f"/{name} keeps its data in another file (HDF5 external storage); a trajectory file stores its own "
                "data")
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in BUILTIN_FILTERS:
            return (f"/{name} uses HDF5 filter {code}, a plugin; allowed: {', '.join(BUILTIN_FILTERS.values())} "
                    "(built into HDF5)")
    dtype = ds.dtype
    if dtype.kind not in "fiubS" or dtype.fields is not None or dtype.subdtype is not None:
        return f"/{name} has dtype {dtype}; trajectory datasets hold numbers or fixed-length bytes"
    nbytes = math.prod(ds.shape or ()) * dtype.itemsize
    if name not in SPARSE and nbytes > bound:
        return (f"/{name} declares shape {ds.shape} ({nbytes} bytes), more than a file of {bound // 4 - 2**18} bytes "
                "holds")
    return None


def read_data(ds: h5py.Dataset, selection: Any = ()) -> Any:
    """``ds[selection]``; a chunk whose checksum fails, or any other failed read, is one
    FileFormatError naming the dataset."""
    try:
        return ds[selection]
    except (OSError, RuntimeError) as e:  # HDF5 reports a failed metadata checksum as RuntimeError
        raise FileFormatError(f"{ds.file.filename}: {ds.name} cannot be read: a checksum mismatch or damaged data "
                              f"({str(e).splitlines()[0] if str(e) else 'read failed'})") from None


def shown(value: Any) -> str:
    """A value read from a file, for an error message: one short line whatever it holds (an
    array by its shape and type, anything else by its repr, cut to 60 characters)."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} ({value.dtype})"
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(where: str, name: str, expected: str, found: Any) -> FileFormatError:
    return FileFormatError(f"{where}: /{name} should be {expected}, found {found}")


def group(f: h5py.File | _Tree, name: str, where: str) -> h5py.Group:
    obj = f.get(name)
    if not isinstance(obj, h5py.Group):
        raise FileFormatError(f"{where}: missing group /{name} (damaged or incomplete file)")
    return obj


def dataset(f: h5py.File | _Tree, name: str, where: str, kinds: str = "f", shape: Sequence[int | None] | None = None,
            ndims: Sequence[int] | None = None, table: bool = False) -> h5py.Dataset:
    """The dataset ``name``, checked: dtype kind in ``kinds``, and a shape matching ``shape``
    (None: any length; for a ``table``, the first entry is its least row count: a reader
    beside the writer may see a row ahead of the commit marker) or a rank in ``ndims``."""
    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise FileFormatError(f"{where}: missing dataset /{name} (damaged or incomplete file)")
    if obj.dtype.kind not in kinds:
        names = {"f": "floating point", "i": "integer", "u": "unsigned", "b": "boolean", "S": "bytes"}
        raise _bad(where, name, " or ".join(names[k] for k in kinds), f"dtype {obj.dtype}")
    if ndims is not None and obj.ndim not in ndims:
        raise _bad(where, name, f"of rank {' or '.join(map(str, ndims))}", f"shape {obj.shape}")
    if table and (obj.chunks is None or not obj.shape or obj.maxshape[0] is not None):
        raise _bad(where, name, "an extendable table (chunked, unlimited rows)", f"shape {obj.shape}, maxshape "
                   f"{obj.maxshape}")
    if shape is not None:
        ok = obj.ndim == len(shape) and all(want is None or (have >= want if i == 0 and table else have == want)
                                            for i, (have, want) in enumerate(zip(obj.shape, shape)))
        if not ok:
            expected = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            raise _bad(where, name, f"of shape {expected}", f"shape {obj.shape}")
    return obj


def scalar(f: h5py.File | _Tree, name: str, where: str, kinds: str) -> Any:
    """A one-value dataset (shape () in files before version 5, (1,) since), read."""
    ds = dataset(f, name, where, kinds)
    if ds.shape not in ((), (1,)):
        raise _bad(where, name, "one value", f"shape {ds.shape}")
    value = read_data(ds) if ds.shape == () else read_data(ds, 0)
    return value.item() if isinstance(value, np.generic) else value


def text(f: h5py.File | _Tree, name: str, where: str, choices: Sequence[str] | None = None) -> str:
    """A bytes dataset as text (UTF-8; one of ``choices`` when given)."""
    raw = scalar(f, name, where, "S")
    try:
        value = raw.decode() if choices is not None else raw.decode(errors="replace")
    except UnicodeDecodeError:
        raise _bad(where, name, "UTF-8 text", repr(raw[:40])) from None
    if choices is not None and value not in choices:
        raise _bad(where, name, f"one of {', '.join(choices)}", repr(value[:40]))
    return value


def json_attribute(attrs: Any, key: str, where: str, kind: type = dict) -> Any:
    """A JSON text attribute parsed, of the given kind."""
    raw = attrs.get(key)
    if isinstance(raw, bytes):
        raw = raw.decode(errors="replace")
    if not isinstance(raw, str):
        raise FileFormatError(f"{where}: attribute {key!r} should be JSON text, found {type(raw).__name__}")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise FileFormatError(f"{where}: attribute {key!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise FileFormatError(f"{where}: attribute {key!r} should be a JSON {kind.__name__}, found "
                              f"{type(value).__name__}")
    return value


def config_of(f: h5py.File, where: str) -> RunConfig:
    """The run's config from the ``config`` attribute, validated field by field."""
    data = json_attribute(f.attrs, "config", where)
    try:
        return RunConfig.from_dict(data, f"{where} /config")
    except GflowError as e:
        raise FileFormatError(str(e)) from None
    except (TypeError, ValueError, RecursionError) as e:  # a field of a type the checks do not expect
        raise FileFormatError(f"{where} /config: unreadable ({type(e).__name__})") from None


# The fields of the model, data and loss descriptions gflow reads, and their JSON types.
_DESCRIBED = {
    "model": {"source": str, "class": str, "reference": str, "args": dict, "outputs": int, "n_params": int,
              "parameters": list, "w0_sha256": str, "arch": str, "repr": str, "eval_mode_layers": list,
              "batchnorm": dict},
    "data": {"source": str, "reference": str, "args": dict, "x_shape": list, "x_dtype": str, "y_dtype": str,
             "digest": str, "dataset": str},
    "loss": {"source": str, "name": str, "reference": str},
}


def check_description(name: str, value: dict[str, Any], where: str) -> None:
    for key, kind in _DESCRIBED[name].items():
        if key in value and not (isinstance(value[key], kind) and not isinstance(value[key], bool)):
            raise FileFormatError(f"{where}: attribute {name!r} field {key!r} should be a JSON "
                                  f"{kind.__name__}, found {type(value[key]).__name__}")
    if "outputs" in value and value["outputs"] < 1:
        raise FileFormatError(f"{where}: attribute {name!r} field 'outputs' should be >= 1, "
                              f"found {shown(value['outputs'])}")
    if name == "data" and not all(isinstance(n, int) and not isinstance(n, bool) for n in value.get("x_shape", [])):
        raise FileFormatError(f"{where}: attribute 'data' field 'x_shape' should list integers")
    if name == "model" and not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], list)
                                   and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in p[1])
                                   for p in value.get("parameters", [])):
        raise FileFormatError(f"{where}: attribute 'model' field 'parameters' should list [name, shape] pairs "
                              "(shapes of integers >= 0)")
    if name == "model" and not all(isinstance(n, str) for n in value.get("eval_mode_layers", [])):
        raise FileFormatError(f"{where}: attribute 'model' field 'eval_mode_layers' should list layer names")


class _Tree:
    """A file's objects by path, each looked up once: h5py's lookup by name is most of the
    schema check's cost. Offers what the checks use of an h5py.File: ``get``, ``attrs``,
    ``swmr_mode``, and the member names of a group (``members``)."""

    def __init__(self, f: h5py.File) -> None:
        self.attrs, self.swmr_mode = f.attrs, f.swmr_mode
        self._f = f
        self._objects: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        if name not in self._objects:
            self._objects[name] = self._f.get(name)
        return self._objects[name]

    def members(self, name: str) -> list[str]:
        return list(self.get(name))

    def __getitem__(self, name: str) -> Any:
        return self.get(name)


def check_schema(file: h5py.File, where: str, cfg: RunConfig) -> None:
    """Types, shapes and ranges of everything the reader uses (module docstring)."""
    f = _Tree(file)
    for name in ("run", "init", "data", "steps", "saves"):
        group(f, name, where)
    n_params = dataset(f, "init/w0", where, "f", (None,)).shape[0]
    recorded = f.attrs.get("n_params", n_params)
    if not isinstance(recorded, (int, np.integer)) or int(recorded) != n_params:
        raise FileFormatError(f"{where}: attribute 'n_params' should be {n_params} (the length of /init/w0), "
                              f"found {shown(recorded)}")
    f0 = dataset(f, "init/f0_train", where, "f", ndims=(1, 2))
    f0_test = dataset(f, "init/f0_test", where, "f", (None, *f0.shape[1:]))
    for split, outputs in (("train", f0), ("test", f0_test)):
        labels = dataset(f, f"data/y_{split}", where, "fiub", ndims=(1, 2))
        if labels.shape[0] != outputs.shape[0]:
            raise _bad(where, f"data/y_{split}", f"{outputs.shape[0]} labels (one per output row)", labels.shape[0])
    text(f, "run/status", where, STATUSES)
    text(f, "run/stop_reason", where)
    scalar(f, "run/next_dt", where, "f")
    state = 2 * n_params if cfg.momentum else n_params

    saves = dataset(f, "saves/t", where, "f", (None,), table=True)
    live = f.swmr_mode  # a live writer's file: each table's extent is read fresh, the marker's first
    if live:
        saves.refresh()
    rows = saves.shape[0]
    saves_members = f.members("saves")
    for name in saves_members:
        ds = dataset(f, f"saves/{name}", where, "f", table=True)
        if live:
            ds.refresh()
        if ds.ndim == 0 or ds.shape[0] < rows:
            raise _bad(where, f"saves/{name}", f"a table of at least {rows} rows (as /saves/t)", f"shape {ds.shape}")
    layers = json_attribute(f["saves"].attrs, "layers", f"{where} /saves", list) if "layers" in f["saves"].attrs \
        else None
    dataset(f, "saves/f_train", where, "f", (rows, *f0.shape), table=True)
    dataset(f, "saves/f_test", where, "f", (rows, *f0_test.shape), table=True)
    dataset(f, "saves/weight_change", where, "f", (rows, len(layers) if layers is not None else None), table=True)
    for name in ("state", "dstate"):
        if name in saves_members:
            dataset(f, f"saves/{name}", where, "f", (rows, state), table=True)
    if "hessian" in saves_members:
        dataset(f, "saves/hessian", where, "f", (rows, cfg.hessian_k or None), table=True)
    if "representation_change" in saves_members:
        hidden = json_attribute(f["saves/representation_change"].attrs, "layers",
                                f"{where} /saves/representation_change", list)
        dataset(f, "saves/representation_change", where, "f", (rows, len(hidden)), table=True)
    for name in ("t", "step", "evals"):
        values = read_data(f[f"saves/{name}"], slice(None, rows))
        if not np.isfinite(values).all() or (name != "t" and (values < 0).any()) or (np.diff(values) < 0).any():
            raise _bad(where, f"saves/{name}", "finite, non-negative and non-decreasing", "other values")
    for name in f.members("steps"):
        dataset(f, f"steps/{name}", where, "f", (None,), table=True)
    if f.get("kernel") is not None:
        _check_kernel(f, where, f0)
    if f.get("checkpoint") is not None:
        version = file.attrs.get("format_version", 0)
        _check_checkpoint(f, where, state, rows, digest=isinstance(version, (int, np.integer)) and version >= 5)


def _check_kernel(f: _Tree, where: str, f0: h5py.Dataset) -> None:
    attrs = f["kernel"].attrs
    n, outputs = attrs.get("n"), attrs.get("outputs", "trace")
    if isinstance(outputs, bytes):
        outputs = outputs.decode(errors="replace")
    if not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= f0.shape[0]:
        raise FileFormatError(f"{where}: /kernel attribute 'n' should be an integer in [1, {f0.shape[0]}], "
                              f"found {shown(n)}")
    if not isinstance(outputs, str) or outputs not in ("trace", "full"):
        raise FileFormatError(f"{where}: /kernel attribute 'outputs' should be trace or full, found {shown(outputs)}")
    size = int(n) * (f0.shape[1] if outputs == "full" and f0.ndim == 2 else 1)
    for name in f.members("kernel"):  # every member a table: truncating a file resizes them all
        dataset(f, f"kernel/{name}", where, "f", table=True)
    marker = dataset(f, "kernel/t", where, "f", (None,), table=True)
    for name in ("change", "norm"):
        dataset(f, f"kernel/{name}", where, "f", (marker.shape[0],), table=True)
    dataset(f, "kernel/theta", where, "f", (marker.shape[0], size, size), table=True)
    dataset(f, "init/theta", where, "f", (size, size))
    if not np.isfinite(read_data(marker)).all():
        raise _bad(where, "kernel/t", "finite times", "other values")


def _check_checkpoint(f: _Tree, where: str, state: int, rows: int, digest: bool) -> None:
    """The checkpoint's datasets; ``digest``: the state's digests are part of it (version 5)."""
    current = scalar(f, "checkpoint/current", where, "if")
    if current not in (-1, 0, 1):
        raise _bad(where, "checkpoint/current", "-1, 0 or 1", repr(current))
    scalars = dataset(f, "checkpoint/scalars", where, "f", (2, 7))
    dataset(f, "checkpoint/state", where, "f", (2, state))
    if digest or "digest" in f.members("checkpoint"):
        dataset(f, "checkpoint/digest", where, "S", (2,))
    if "hessian_vectors" in f.members("checkpoint"):
        dataset(f, "checkpoint/hessian_vectors", where, "f", (2, None, None))
    if current >= 0:
        t, _, step, evals, _, saves, row = read_data(scalars, int(current)).tolist()
        counts = (step, evals, saves)
        if not (math.isfinite(t) and all(math.isfinite(c) and c >= 0 and c == int(c) for c in counts)
                and row == int(row) and -1 <= row < max(int(saves), 0)):
            raise _bad(where, "checkpoint/scalars", f"a finite time, whole counts and a save row below its saves "
                       f"(slot {int(current)})", scalars[int(current)].tolist())
