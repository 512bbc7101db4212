"""Discrete training beside the flow: gd and heavy-ball iterate as the textbook loops do,
converge to the flow at first order in the learning rate, and compare on one time axis."""

import numpy as np
import pytest
import torch

import gflow
from gflow import ConfigError

from .configs import TINY

BASE = TINY.replace(t_end=4.0, saves=5, save_t_min=0.5)


def test_gd_iterates_are_those_of_the_textbook_loop(tmp_path):
    traj = gflow.run(BASE.replace(solver="gd", lr=0.25), tmp_path / "gd.h5", progress=False)
    flow = traj.flow
    w = flow.w0.clone()
    for _ in range(16):
        w = w - 0.25 * flow.loss_and_grad(w)[1]
    assert torch.allclose(traj.state(-1), w, rtol=1e-13, atol=1e-15)
    assert traj.summary()["step"] == 16 and np.allclose(traj.save_times / 0.25, np.round(traj.save_times / 0.25))


def test_heavy_ball_iterates_are_those_of_the_textbook_loop(tmp_path):
    traj = gflow.run(BASE.replace(solver="heavy-ball", lr=0.25, momentum_beta=0.8), tmp_path / "hb.h5", progress=False)
    flow = traj.flow
    w, u = flow.w0.clone(), torch.zeros_like(flow.w0)
    for _ in range(16):
        u = 0.8 * u - 0.25 * flow.loss_and_grad(w)[1]
        w = w + u
    assert torch.allclose(flow.weights(traj.state(-1)), w, rtol=1e-12, atol=1e-14)


def test_gradient_descent_converges_to_the_flow_at_first_order_in_the_learning_rate(tmp_path):
    flow_run = gflow.run(BASE.replace(solver="dopri8", rtol=1e-11, atol=1e-13), tmp_path / "flow.h5", progress=False)
    distances = []
    for lr in (0.1, 0.05, 0.025):
        gd = gflow.run(BASE.replace(solver="gd", lr=lr), tmp_path / f"gd{lr}.h5", progress=False)
        table = gflow.compare(gd, flow_run)
        assert list(table.columns[:2]) == ["t", "distance"] and table["t"].iloc[-1] == BASE.t_end
        distances.append(float(table["distance"].iloc[-1]))
    ratios = [distances[0] / distances[1], distances[1] / distances[2]]
    assert all(1.8 < r < 2.2 for r in ratios), (distances, ratios)


def test_compare_reports_lr_times_sharpness_for_a_discrete_run_with_a_spectrum(tmp_path):
    gd = gflow.run(BASE.replace(solver="gd", lr=0.5, hessian_k=1), tmp_path / "gd.h5", progress=False)
    flow_run = gflow.run(BASE.replace(solver="exponential"), tmp_path / "f.h5", progress=False)
    table = gflow.compare(gd.path, flow_run.path)
    assert np.allclose(table["lr_lambda_max_a"], 0.5 * gd.hessian_spectrum()[1][1:, 0])


def test_compare_refuses_runs_of_different_networks(tmp_path):
    a = gflow.run(BASE, tmp_path / "a.h5", progress=False)
    b = gflow.run(BASE.replace(seed=1), tmp_path / "b.h5", progress=False)
    with pytest.raises(gflow.GflowError, match="same network"):
        gflow.compare(a, b)


@pytest.mark.parametrize("changes,field", [
    ({"solver": "gd"}, "lr"),
    ({"solver": "gd", "lr": 0.3, "t_end": 1.0}, "t_end"),
    ({"solver": "gd", "lr": 0.5, "interpolate": True}, "interpolate"),
    ({"solver": "heavy-ball", "lr": 0.5, "momentum_beta": 1.0}, "momentum_beta"),
    ({"solver": "gd", "lr": 0.5, "flow": "momentum"}, "flow"),
])
def test_discrete_training_settings_are_checked_with_one_clear_error(changes, field):
    with pytest.raises(ConfigError, match=field):
        BASE.replace(**changes)
