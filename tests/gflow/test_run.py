import h5py
import numpy as np
import pytest

import gflow
from gflow import GflowError, RunConfig
from gflow.run import save_times
from gflow.store import REQUIRED

CFG = RunConfig(ptr=100, pte=50, width=20, t_end=50.0, saves=12, save_t_min=0.1)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run.h5"
    return gflow.run(CFG, path, progress=False)


def test_every_documented_dataset_is_present(stored):
    with h5py.File(stored.path) as f:
        for name in REQUIRED + ("saves/state", "saves/dstate"):
            assert name in f, name
        assert f.attrs["format"] == "gflow-trajectory" and f.attrs["format_version"] == 4
    assert stored.status == "finished" and stored.stop_reason == "reached t_end"
    assert stored.config == CFG


def test_save_times_are_exactly_the_requested_ones(stored):
    assert np.array_equal(stored.save_times, np.array(save_times(CFG)))
    assert stored.save_times[0] == 0.0 and stored.save_times[-1] == CFG.t_end


def test_train_loss_decreases_along_the_flow(stored):
    saves, steps = stored.saves, stored.steps
    assert np.all(np.diff(saves["train_loss"]) <= 0)
    assert np.all(np.diff(steps["loss"]) <= 1e-15)
    assert saves["train_loss"].iloc[-1] < 0.5 * saves["train_loss"].iloc[0]


def test_evaluations_are_counted_step_by_step(stored):
    steps = stored.steps
    assert np.array_equal(steps["evals"], 1 + np.arange(1, len(steps) + 1) + np.cumsum(steps["rejected"]))
    assert stored.summary()["evals"] == steps["evals"].iloc[-1]
    assert np.all(steps["dgrad_ratio"] < 1) and np.all(steps["dout_ratio"] < 1)
    assert np.allclose(np.cumsum(steps["dt"]), steps["t"], rtol=1e-9)


def test_stored_outputs_and_states_agree_with_the_model(stored):
    flow = gflow.build(stored.config)
    for i in (0, 5, -1):
        w = stored.state(i)
        assert np.allclose(stored.outputs(i, "train"), flow.model(w, flow.x_train).numpy(), rtol=1e-12)
        assert np.allclose(stored.outputs(i, "test"), flow.model(w, flow.x_test).numpy(), rtol=1e-12)
        assert np.allclose(stored.derivative(i).numpy(), flow.vector_field(0.0, w).numpy(), rtol=1e-10)
    assert np.array_equal(stored.outputs(0), stored.read("init/f0_train"))
    assert np.all(stored.read("saves/weight_change")[0] == 0)
    assert np.all(stored.read("saves/weight_change")[-1] > 0)


def test_output_index_out_of_range_and_bad_split_are_clear(stored):
    with pytest.raises(IndexError, match="out of range"):
        stored.outputs(10_000)
    with pytest.raises(ValueError, match="split"):
        stored.outputs(0, "validation")


def test_existing_output_is_not_overwritten_without_permission(stored):
    before = stored.path.read_bytes()
    with pytest.raises(GflowError, match="exists; pass --overwrite"):
        gflow.run(CFG, stored.path)
    assert stored.path.read_bytes() == before


def test_momentum_run_stores_position_and_velocity(tmp_path):
    traj = gflow.run(CFG.replace(solver="momentum", tau=0.5, t_end=10.0), tmp_path / "m.h5", progress=False)
    flow = gflow.build(traj.config)
    assert traj.status == "finished"
    assert traj.state(-1).shape == (2 * flow.n_params,)
    assert traj.saves["train_loss"].iloc[-1] < traj.saves["train_loss"].iloc[0]


def test_stop_margin_ends_the_run_when_every_margin_is_reached(tmp_path):
    traj = gflow.run(CFG.replace(t_end=1e4, stop_margin=1.0), tmp_path / "s.h5", progress=False)
    flow = gflow.build(traj.config)
    a = flow.scaled(flow.model(traj.state(-1), flow.x_train), "train")
    assert traj.status == "finished" and "margin" in traj.stop_reason
    assert bool((a * flow.y_train >= 1).all())
    assert traj.save_times[-1] < 1e4


def test_hinge_kink_collapses_the_gradient_ratio_step_and_fails_with_the_reason(tmp_path):
    # Seed 001: the gradient-ratio stepper "works well only with full batch and smooth loss".
    traj = gflow.run(CFG.replace(loss="hinge", t_end=1e3), tmp_path / "h.h5", progress=False)
    assert traj.status == "failed" and "step size collapsed" in traj.stop_reason
    assert traj.save_times[-1] < 1e3  # the state where it failed is saved


def test_same_config_gives_a_bitwise_identical_trajectory(tmp_path, stored):
    again = gflow.run(CFG, tmp_path / "again.h5", progress=False)
    assert np.array_equal(again.read("saves/state"), stored.read("saves/state"))
    assert np.array_equal(again.steps["dt"], stored.steps["dt"])
