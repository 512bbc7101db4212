"""A trajectory file as an ``xarray.Dataset`` (the optional ``gflow[xarray]`` extra).

Trajectories are arrays over time x sample x output; xarray names those axes, so a run
can be sliced by time (``ds.f_train.sel(t=10, method="nearest")``), reduced over samples,
or written to netCDF/Zarr with its coordinates. Reads the file only: no network, no code.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import GflowError
from .format import OPTIONAL_STEP_COLUMNS, STEP_COLUMNS

if TYPE_CHECKING:
    import xarray as xr

    from .reader import TrajectoryFile


def _xarray() -> Any:
    try:
        import xarray
    except ImportError:
        raise GflowError("to_xarray needs xarray: pip install 'gflow[xarray]'") from None
    return xarray


def _outputs(values: np.ndarray, split: str) -> tuple[tuple[str, ...], np.ndarray]:
    dims = ("t", f"sample_{split}") + (("output",) if values.ndim == 3 else ())
    return dims, values


def to_xarray(file: TrajectoryFile, states: bool = True) -> xr.Dataset:
    """The run as one Dataset.

    Coordinates: ``t`` (save times), ``sample_train``/``sample_test`` (indices of the
    points), ``output`` (for k outputs), ``t_state`` (the saves that store the state),
    ``parameter`` (index into the flat state), ``accepted_step`` (1, 2, ...: the steps
    table's rows), ``t_kernel`` and
    ``kernel_i``/``kernel_j`` (kernel snapshots, t = 0 first).

    Variables: every column of the saves table on ``t`` (train/test loss and error, counters,
    ...); ``f_train``, ``f_test`` (raw outputs); ``weight_change`` (per parameter tensor, on
    ``layer``); ``state`` on (``t_state``, ``parameter``) unless ``states=False`` (the largest
    part of a file); every column of the steps table on ``accepted_step`` (``step_t``, ``step_dt``,
    ...); ``kernel`` and ``kernel_change`` where the run took snapshots; the Hessian's top
    eigenvalues on (``t``, ``eigenvalue``) where it stored them. Attributes: the config and
    the model, data and loss descriptions (JSON), the status and stop reason.
    """
    xr = _xarray()
    saves = file.saves
    times = saves["t"].to_numpy()
    data: dict[str, Any] = {c: ("t", saves[c].to_numpy()) for c in saves.columns if c != "t"}
    data["f_train"] = _outputs(file.read("saves/f_train"), "train")
    data["f_test"] = _outputs(file.read("saves/f_test"), "test")
    coords: dict[str, Any] = {"t": times}
    if file.has("saves/weight_change"):
        data["weight_change"] = (("t", "layer"), file.read("saves/weight_change"))
        coords["layer"] = json.loads(file.read_attr("saves", "layers"))
    if states and len(file.stored_states):
        stored = file.stored_states
        data["state"] = (("t_state", "parameter"), np.stack([file.state(int(i)).numpy() for i in stored]))
        coords["t_state"] = times[stored]
    steps = file.steps
    columns = [c for c in (*STEP_COLUMNS, *OPTIONAL_STEP_COLUMNS) if c in steps.columns]
    data.update({f"step_{c}": ("accepted_step", steps[c].to_numpy()) for c in columns})
    coords["accepted_step"] = np.arange(1, len(steps) + 1)
    if file.has("kernel/t"):
        kernel_times, thetas = file.kernel_snapshots()
        change = file.stored_kernel_change()[1]  # the run's own, without the initial kernel's 0
        data["kernel"] = (("t_kernel", "kernel_i", "kernel_j"), thetas)
        data["kernel_change"] = ("t_kernel", np.concatenate([np.zeros(len(kernel_times) - len(change)), change]))
        coords["t_kernel"] = kernel_times
    if file.has("saves/hessian"):
        data["hessian"] = (("t", "eigenvalue"), file.hessian_spectrum()[1])
    attrs = {"config": file.config.to_json(), "status": file.status, "stop_reason": file.stop_reason,
             **{name: json.dumps(value) for name, value in file.sources.items()}}
    return xr.Dataset(data, coords=coords, attrs=attrs)
