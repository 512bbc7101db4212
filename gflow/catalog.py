"""A catalog of stored runs: one row per file, and the seed averages of the paper.

``catalog(DIR)`` reads only each file's attributes, its ``/run`` status, the last row of
the save tables and the last kernel snapshot, so a thousand runs take seconds.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import RunConfig
from .errors import FileFormatError, GflowError
from .geometry import check_threshold, first_crossing
from .losses import classification_error
from .manifest import NAME as MANIFEST
from .manifest import Manifest
from .store import TrajectoryFile
from .store.listing import directory_runs, natural_key
from .timescales import power_law

RESULTS = ("file", "status", "stop_reason", "t", "steps", "evals", "wall", "train_loss", "train_err",
           "test_loss", "test_err", "kernel_change", "t1_kernel", "kernel_alignment", "kernel_rank", "sharpness",
           "weight_change")
CONFIG = tuple(f.name for f in fields(RunConfig))


def catalog(directory: str | Path, eps: float = 0.1) -> pd.DataFrame:
    """One row per ``*.h5`` file in ``directory``: every RunConfig field (``model_args`` and
    ``data_args`` as JSON, and each of their keys as a column ``model_args.KEY``), then status,
    stop_reason, final t, steps, evals, wall, final train/test loss and error, and, for runs
    with kernel snapshots, the final kernel change ||Theta - Theta0|| / ||Theta0||,
    t1_kernel (first time it exceeds ``eps``; inf if never), the final kernel-target
    alignment and effective rank (:meth:`TrajectoryFile.kernel_signatures`), and for runs
    with a Hessian spectrum the sharpness lambda_max at the last save; weight_change is
    ||w(T) - w0|| / ||w0|| over all parameters at the last save. Unreadable files get
    a row with status ``unreadable`` and the reason: one bad file never hides the others.

    A sweep's directory also lists the runs its manifest (:mod:`gflow.manifest`) records
    without a file: ones that failed before their file existed, ones whose process died
    first (``lost``), ones not started yet (``planned``); a file whose run died with its
    process (status ``running``, which the manifest knows as ``lost``) shows ``lost``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise GflowError(f"{directory}: no such directory")
    check_threshold(eps)
    try:
        recorded = Manifest(directory).read()
    except GflowError as e:
        recorded = {MANIFEST: {"state": "unreadable", "reason": str(e)}}
    files = directory_runs(directory)
    rows = [_row(path, eps, recorded.get(path.stem)) for path in files]
    present = {path.stem for path in files}
    rows += [_recorded_row(name, entry) for name, entry in sorted(recorded.items(), key=lambda e: natural_key(e[0]))
             if name not in present]
    arguments = sorted({k for row in rows for k in row if k not in CONFIG and k not in RESULTS})
    return pd.DataFrame(rows, columns=[*CONFIG, *RESULTS, *arguments])


def _recorded_row(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A manifest entry with no file: its config fields (when valid), state and reason."""
    row: dict[str, Any] = {}
    try:
        if entry.get("config"):
            row = _config_columns(_fields(RunConfig.from_dict(entry["config"])))
    except (GflowError, TypeError, ValueError):
        pass
    file = name if name == MANIFEST else f"{name}.h5 (no file)"
    return {**row, "file": file, "status": entry["state"], "stop_reason": entry.get("reason", "")}


def _row(path: Path, eps: float, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        return _file_row(path, eps, recorded)
    except GflowError as e:
        return {"file": path.name, "status": "unreadable", "stop_reason": str(e)}
    except Exception as e:  # a check the reader lacks: the listing still lists the others
        return {"file": path.name, "status": "unreadable", "stop_reason": f"{path}: {type(e).__name__}: {e}"}


def _file_row(path: Path, eps: float, recorded: dict[str, Any] | None) -> dict[str, Any]:
    traj = TrajectoryFile(path)
    s = traj.summary()
    if s["status"] == "running" and recorded is not None and recorded.get("state") == "lost":
        s.update(status="lost", stop_reason=recorded.get("reason", s["stop_reason"]))
    row: dict[str, Any] = _fields(traj.config)
    row.update(file=path.name, status=s["status"], stop_reason=s["stop_reason"], t=s.get("t", math.nan),
               steps=s.get("step", 0), evals=s.get("evals", 0), wall=s.get("wall", math.nan),
               train_loss=s.get("train_loss", math.nan), train_err=s.get("train_err", math.nan),
               test_loss=s.get("test_loss", math.nan), test_err=s.get("test_err", math.nan),
               kernel_change=math.nan, t1_kernel=math.nan, kernel_alignment=math.nan, kernel_rank=math.nan,
               sharpness=math.nan, weight_change=math.nan)
    times, change = traj.stored_kernel_change()
    if len(change):
        row.update(kernel_change=float(change[-1]), t1_kernel=first_crossing(times, change, eps))
        last = traj.kernel_signatures(top=1, last=True).iloc[-1]
        row.update(kernel_alignment=float(last["alignment"]), kernel_rank=float(last["effective_rank"]))
    stored = traj.stored_states
    if len(stored) and stored[-1] == len(traj) - 1:  # the last save's state: every finished run has it
        w0 = traj.read("init/w0")
        row["weight_change"] = float(np.linalg.norm(traj.state(-1).numpy()[: len(w0)] - w0) / np.linalg.norm(w0))
    if traj.has("saves/hessian") and len(traj):
        row["sharpness"] = float(traj.hessian_spectrum()[1][-1, 0])
    return _config_columns(row)


def _fields(cfg: RunConfig) -> dict[str, Any]:
    """A config's fields, ``width`` being the network's h (NaN for a model without one)."""
    return {**cfg.to_dict(), "width": cfg.network_width}


def _config_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A config's fields as catalog columns: one per argument of a factory (sweeps vary
    them) and the whole arguments as JSON; classes as text."""
    for name in ("model_args", "data_args"):
        row.update({f"{name}.{k}": v for k, v in row[name].items()})
        row[name] = json.dumps(row[name], sort_keys=True)
    for name in ("classes", "save_at"):
        if isinstance(row.get(name), list):
            row[name] = " ".join(map(str, row[name]))
    return row


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The columns of a catalog a person reads it by: file and status, the config fields
    (and factory arguments) whose values differ between the rows (a sweep's grid, an
    ensemble's seeds), the results that some row has, and stop_reason unless every run
    finished (``gflow query``'s table; CSV and JSON keep every column)."""
    # over the rows that have a config (an unreadable file's row has none)
    varying = [c for c in table.columns if c not in RESULTS and table[c].dropna().astype(str).nunique() > 1]
    results = [c for c in RESULTS if c not in ("file", "status", "stop_reason") and table[c].notna().any()]
    unfinished = (table["status"] != "finished").any()
    return table[["file", "status", *varying, *results, *(["stop_reason"] if unfinished else [])]]


_CONDITION = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(==|!=|<=|>=|<|>|=)\s*(.*?)\s*$")


def where(table: pd.DataFrame, conditions: Sequence[str]) -> pd.DataFrame:
    """Rows meeting every condition ``column OP value`` (OP one of == != < <= > >=, = is ==),
    e.g. ``alpha>=1``, ``status==finished``. Parsed, never evaluated."""
    mask = pd.Series(True, index=table.index)
    for text in conditions:
        m = _CONDITION.match(text)
        if not m:
            raise GflowError(f"--where {text!r}: expected COLUMN OP VALUE with OP one of == != < <= > >=")
        column, op, raw = m.groups()
        if column not in table.columns:
            raise GflowError(f"--where {text!r}: no column {column!r}; columns: {', '.join(table.columns)}")
        value = _parse_value(raw)
        col = table[column]
        if isinstance(value, str) and op not in ("==", "=", "!="):
            raise GflowError(f"--where {text!r}: {op} needs a number")
        ops = {"==": col == value, "=": col == value, "!=": col != value}
        if not isinstance(value, str):
            numeric = pd.to_numeric(col, errors="coerce")
            ops.update({"<": numeric < value, "<=": numeric <= value, ">": numeric > value, ">=": numeric >= value})
        mask &= ops[op]
    return table[mask]


def _parse_value(raw: str) -> Any:
    raw = raw.strip().strip("'\"")
    try:
        return float(raw)
    except ValueError:
        return {"true": True, "false": False}.get(raw.lower(), raw)


def ensemble(directory: str | Path, by: Sequence[str] = ("alpha", "width")) -> pd.DataFrame:
    """Averages over initializations (finding (iii) of Geiger et al. 2019).

    For each group of finished runs that differ only in ``seed``: with the learned function
    F_s(x) = alpha (f(w_s(T), x) - f(w_s(0), x)) of seed s on the test set, the mean predictor
    F_bar = mean_s F_s, its test error (:func:`~gflow.losses.classification_error`), the mean
    single-run test error, and the fluctuations delta_F = sqrt(mean_{s,x} (F_s - F_bar)^2),
    over the ``seeds`` runs whose outputs read; ``unreadable`` counts the group's runs whose
    stored outputs fail their checks (one damaged file never hides its group).
    """
    table = catalog(directory)
    finished = table[table["status"] == "finished"]
    if finished.empty:
        raise GflowError(f"{directory}: no finished runs")
    keys = [c for c in CONFIG if c != "seed"]
    rows = []
    for _, group in finished.groupby(keys, dropna=False, sort=True):
        outputs, labels, errors = [], None, []
        for name, test_err in zip(group["file"], group["test_err"]):
            try:
                traj = TrajectoryFile(Path(directory) / name)
                f_test, f0, y = traj.outputs(-1, "test"), traj.read("init/f0_test"), traj.read("data/y_test")
            except FileFormatError:  # its last outputs fail their checksum: the others still average
                continue
            outputs.append(traj.config.alpha * (f_test - f0))
            if labels is not None and not np.array_equal(labels, y):
                raise GflowError(f"{name}: another test set than the rest of its group (data_seed must not vary)")
            labels = y
            errors.append(test_err)
        if not outputs:
            continue
        f = np.stack(outputs)
        f_bar = f.mean(axis=0)
        rows.append({
            **{k: group[k].iloc[0] for k in by}, "seeds": len(outputs), "unreadable": len(group) - len(outputs),
            "ensemble_test_err": classification_error(torch.from_numpy(f_bar), torch.from_numpy(labels)),
            "mean_test_err": float(np.mean(errors)),
            "delta_F": float(np.sqrt(((f - f_bar) ** 2).mean())),
        })
    return pd.DataFrame(rows)


def fluctuation_exponents(ens: pd.DataFrame) -> pd.DataFrame:
    """Per alpha, the exponent b of delta_F ~ h^b fitted over widths (the paper finds b near -1/2)."""
    rows = []
    for alpha, group in ens.groupby("alpha"):
        ok = group[(group["delta_F"] > 0) & np.isfinite(group["delta_F"])]
        b = power_law(ok["width"].to_numpy(float), ok["delta_F"].to_numpy())[0] if len(ok) >= 2 else math.nan
        rows.append({"alpha": alpha, "widths": len(ok), "delta_F_exponent": b})
    return pd.DataFrame(rows)
