import h5py
import numpy as np
import pytest
import torch

import gflow
from gflow import GflowError, RunConfig
from gflow.run import save_times
from gflow.store import REQUIRED

from . import usercode

CFG = RunConfig(ptr=100, pte=50, width=20, t_end=50.0, saves=12, save_t_min=0.1, solver="gradient-ratio")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "run.h5"
    return gflow.run(CFG, path, progress=False)


def test_every_documented_dataset_is_present(stored):
    with h5py.File(stored.path) as f:
        for name in REQUIRED + ("saves/state", "checkpoint/current"):
            assert name in f, name
        assert "saves/dstate" not in f  # derivatives only when asked (save_derivatives)
        assert f.attrs["format"] == "gflow-trajectory" and f.attrs["format_version"] == 5
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


def test_stored_outputs_and_states_agree_with_the_model(stored, tmp_path):
    flow = gflow.build(stored.config)
    with_derivatives = gflow.run(CFG.replace(save_derivatives=True), tmp_path / "d.h5", progress=False)
    assert np.array_equal(with_derivatives.read("saves/state"), stored.read("saves/state"))
    for i in (0, 5, -1):
        w = stored.state(i)
        assert np.allclose(stored.outputs(i, "train"), flow.model(w, flow.x_train).numpy(), rtol=1e-12)
        assert np.allclose(stored.outputs(i, "test"), flow.model(w, flow.x_test).numpy(), rtol=1e-12)
        assert np.allclose(with_derivatives.derivative(i).numpy(), flow.vector_field(0.0, w).numpy(), rtol=1e-10)
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


# --- your own model, data and loss -------------------------------------------------------------



def test_a_user_module_equal_to_gflows_fc_reproduces_the_built_in_trajectory(tmp_path):
    """The three routes integrate one ODE: gflow's own network, the same function written as a
    user module (from a factory reference), and that module passed as an object."""
    base = RunConfig(ptr=60, pte=20, t_end=20.0, saves=6)
    builtin = gflow.run(base.replace(width=10, depth=2), tmp_path / "builtin.h5", progress=False)
    factory = gflow.run(base.replace(model="tests.gflow.usercode:fc_like_gflow", model_args={"width": 10, "depth": 2}),
                        tmp_path / "factory.h5", progress=False)
    torch.manual_seed(base.seed)
    obj = gflow.run(base, tmp_path / "object.h5", model=usercode.fc_like_gflow(width=10, depth=2), progress=False)
    assert builtin.status == factory.status == obj.status == "finished"
    for traj in (factory, obj):
        assert np.array_equal(traj.read("init/w0"), builtin.read("init/w0"))
        assert len(traj.steps) == len(builtin.steps)
        assert np.allclose(traj.read("saves/state"), builtin.read("saves/state"), rtol=1e-12, atol=1e-14)
        assert np.allclose(traj.read("saves/f_test"), builtin.read("saves/f_test"), rtol=1e-12, atol=1e-14)
    assert factory.sources["model"]["source"] == "factory" and obj.sources["model"]["source"] == "object"
    assert builtin.sources["model"]["parameters"] == [["weights.0", [10, 64]], ["weights.1", [10, 10]], ["weights.2", [1, 10]]]
    assert factory.sources["model"]["parameters"] == [["layers.0", [10, 64]], ["layers.1", [10, 10]], ["layers.2", [1, 10]]]


@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
@pytest.mark.parametrize("model", ["built-in", "user"])
def test_ten_classes_train_digits_to_zero_training_error(tmp_path, loss, model):
    cfg = RunConfig(loss=loss, solver="exponential", rtol=1e-3, atol=1e-6, t_end=3000.0, saves=5, alpha=1.0)
    if model == "built-in":
        traj = gflow.run(cfg.replace(labels="classes", ptr=100, pte=100, width=32, depth=2), tmp_path / "r.h5",
                         progress=False)
    else:
        traj = gflow.run(cfg, tmp_path / "r.h5", model=usercode.mlp(width=32, outputs=10),
                         data=usercode.digits(100, 100), progress=False)
    assert traj.outputs(-1).shape == (100, 10)
    saves = traj.saves
    assert saves["train_err"].iloc[0] == 1.0  # a = 0 at t = 0: every sample a tie, counted wrong
    assert saves["train_err"].iloc[-1] == 0.0
    assert saves["test_err"].iloc[-1] < 0.25


def test_a_run_from_objects_is_resumed_with_them_bitwise(tmp_path):
    model, data = usercode.mlp(width=12), usercode.parity_digits(40, 10)
    cfg = RunConfig(t_end=50.0, saves=6)  # the default method
    whole = gflow.run(cfg, tmp_path / "whole.h5", model=model, data=data, loss=usercode.log_cosh, progress=False)
    assert whole.summary()["step"] > 4
    part = gflow.run(cfg.replace(max_steps=4), tmp_path / "part.h5", model=model, data=data, loss=usercode.log_cosh,
                     progress=False)
    assert part.status == "stopped"
    with pytest.raises(GflowError, match="the run's model was a Python object .*MLP.*pass it: gflow.open"):
        gflow.resume(part.path, progress=False)
    with pytest.raises(GflowError, match="the run's loss was a Python object .*log_cosh"):
        gflow.resume(part.path, model=model, data=data, progress=False)
    done = gflow.resume(part.path, model=model, data=data, loss=usercode.log_cosh, max_steps=10**6, progress=False)
    assert done.status == "finished"
    assert np.array_equal(done.state(-1), whole.state(-1))


def test_explicit_save_times_are_the_saves(tmp_path):
    cfg = RunConfig(ptr=40, pte=10, width=10, t_end=12.0, save_at=[0.5, 6.0, 6.5, 7.0])
    traj = gflow.run(cfg, tmp_path / "at.h5", progress=False)
    assert traj.save_times.tolist() == [0.0, 0.5, 6.0, 6.5, 7.0, 12.0]


def test_linear_save_spacing_is_even(tmp_path):
    cfg = RunConfig(ptr=40, pte=10, width=10, t_end=10.0, saves=5, save_t_min=2.0, save_spacing="linear")
    traj = gflow.run(cfg, tmp_path / "lin.h5", progress=False)
    assert np.allclose(traj.save_times, [0.0, 2.0, 4.0, 6.0, 8.0, 10.0])


def test_off_a_terminal_progress_is_a_line_every_so_often(tmp_path, capsys, monkeypatch):
    import gflow.progress

    monkeypatch.setattr(gflow.progress, "LINE_EVERY_S", 0.0)
    gflow.run(RunConfig(ptr=40, pte=10, width=10, t_end=20.0, saves=3), tmp_path / "p.h5")  # progress=None: auto
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) > 3 and "\r" not in "".join(lines)
    last = lines[-1]
    assert last.startswith("gflow: t=") and "loss=" in last and "steps=" in last and "evals=" in last
    assert "% of log t" in last and "left)" in last


def test_threads_are_set_for_the_run_restored_after_and_recorded(tmp_path):
    import json

    before = torch.get_num_threads()
    traj = gflow.run(RunConfig(ptr=40, pte=10, width=10, t_end=2.0, saves=2, threads=1), tmp_path / "t.h5",
                     progress=False)
    assert torch.get_num_threads() == before
    assert json.loads(traj.attrs["versions"])["threads"] == 1
