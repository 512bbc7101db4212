"""A trajectory as an xarray Dataset (gflow.store.export)."""

import json

import numpy as np
import pytest

import gflow

from .conftest import CFG


def test_to_xarray_has_outputs_tables_states_and_kernels_on_named_coordinates(tmp_path):
    xr = pytest.importorskip("xarray")
    traj = gflow.run(CFG.replace(kernel_n=6, kernel_every=2, hessian_k=1, state_saves=3), tmp_path / "r.h5",
                     progress=False)
    ds = traj.to_xarray()
    assert isinstance(ds, xr.Dataset)
    assert ds.f_train.dims == ("t", "sample_train") and ds.f_train.shape == (len(traj), CFG.ptr)
    assert np.array_equal(ds.f_train.sel(t=traj.save_times[2]).values, traj.outputs(2))
    assert np.array_equal(ds.test_err.values, traj.saves["test_err"].to_numpy())
    assert np.array_equal(ds.t_state.values, traj.save_times[traj.stored_states])
    assert np.array_equal(ds.state.isel(t_state=-1).values, traj.state(-1).numpy())
    assert ds.step_loss.dims == ("accepted_step",) and ds.step_loss.shape == (len(traj.steps),)
    assert ds.step.dims == ("t",)  # the saves table's step counter
    times, thetas = traj.kernel_snapshots()
    assert np.array_equal(ds.t_kernel.values, times) and np.array_equal(ds.kernel.values, thetas)
    assert np.allclose(ds.kernel_change.values[1:], traj.read("kernel/change")[-(len(times) - 1):])
    assert ds.hessian.dims == ("t", "eigenvalue")
    assert list(ds.layer.values) == list(traj.flow.model.layers)
    assert gflow.RunConfig.from_json(ds.attrs["config"]) == traj.config
    assert json.loads(ds.attrs["model"])["parameters"] == traj.sources["model"]["parameters"]
    assert "state" not in traj.to_xarray(states=False)


def test_k_outputs_get_an_output_dimension(tmp_path):
    pytest.importorskip("xarray")
    traj = gflow.run(CFG.replace(labels="classes", loss="cross-entropy"), tmp_path / "k.h5", progress=False)
    ds = traj.to_xarray(states=False)
    assert ds.f_test.dims == ("t", "sample_test", "output") and ds.sizes["output"] == 10


def test_without_xarray_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    traj = gflow.run(CFG, tmp_path / "r.h5", progress=False)
    real = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name == "xarray":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(gflow.GflowError, match=r"pip install 'gflow\[xarray\]'"):
        traj.to_xarray()
