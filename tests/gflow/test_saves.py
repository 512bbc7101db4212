"""Saves that cost nothing: served from dense output without extra gradient evaluations,
accurate at the save times, and cheap on disk (states at a subset of saves)."""

import numpy as np
import pytest
import torch
from torch import nn

import gflow

from .configs import TINY

SMALL = TINY.replace(ptr=60, width=16, t_end=200.0, saves=30, save_t_min=0.1)


def _flow_outputs_at_saves(cfg, tmp_path):
    """f(t) on the train set at every save time, from dopri8 at rtol 1e-11 landing on each."""
    ref = gflow.run(cfg.replace(solver="dopri8", rtol=1e-11, atol=1e-13, interpolate=False), tmp_path / "ref.h5",
                    progress=False)
    return np.stack([ref.outputs(i) for i in range(len(ref))])


@pytest.mark.parametrize("solver", ["exponential", "chebyshev", "dopri5"])
def test_interpolating_methods_take_the_same_steps_with_thirty_saves_as_with_one(tmp_path, solver):
    cfg = SMALL.replace(solver=solver, rtol=1e-4, atol=1e-7)
    many = gflow.run(cfg, tmp_path / "many.h5", progress=False).summary()
    one = gflow.run(cfg.replace(saves=1), tmp_path / "one.h5", progress=False).summary()
    assert many["evals"] == one["evals"] and many["step"] == one["step"]
    assert many["forwards"] > 20  # the saves took forward passes instead


@pytest.mark.parametrize("solver", ["exponential", "chebyshev", "dopri5"])
def test_interpolated_saves_are_as_accurate_as_the_steps_ends(tmp_path, solver):
    """Against a tight reference at every save time: the error of the interpolated saves
    stays below the error the same method makes when it cuts its steps to land on them.
    The last save, t_end, is a step end in both runs (not interpolated): it only has to
    be accurate (the two runs take different steps, and exprb53s3's error at a given rtol
    depends more on its step sequence than exprb43's: 3.9e-4 there against 4.5e-5)."""
    exact = _flow_outputs_at_saves(SMALL, tmp_path)
    scale = np.linalg.norm(exact[-1] - exact[0])
    errors, ends = {}, {}
    for interpolate in (True, False):
        cfg = SMALL.replace(solver=solver, rtol=1e-4, atol=1e-7, interpolate=interpolate)
        traj = gflow.run(cfg, tmp_path / f"{interpolate}.h5", progress=False)
        assert len(traj) == len(exact)
        relative = [np.linalg.norm(traj.outputs(i) - exact[i]) / scale for i in range(len(traj))]
        errors[interpolate], ends[interpolate] = max(relative[:-1]), relative[-1]
    assert errors[True] <= 2 * errors[False] and errors[True] < 1e-3, errors
    assert max(ends.values()) < 1e-3, ends


def test_an_interpolated_save_stores_what_a_fresh_evaluation_gives_at_its_state(tmp_path):
    traj = gflow.run(SMALL.replace(solver="exponential", rtol=1e-4, state_saves=30), tmp_path / "e.h5",
                     progress=False)
    saves = traj.saves
    i = int(np.flatnonzero(saves["interpolated"].to_numpy() > 0)[5])
    flow = traj.flow
    w = flow.weights(traj.state(i).to(flow.w0))
    assert np.allclose(traj.outputs(i), flow.outputs(w, flow.x_train).numpy(), rtol=1e-12, atol=1e-14)
    assert saves["train_loss"][i] == pytest.approx(float(flow.loss_and_grad(w)[0]), rel=1e-12)


def test_states_are_stored_at_an_even_subset_of_saves_the_first_and_last_always(tmp_path):
    traj = gflow.run(SMALL.replace(solver="exponential", state_saves=5), tmp_path / "s.h5", progress=False)
    stored = traj.stored_states
    assert len(stored) == 5 and stored[0] == 0 and stored[-1] == len(traj) - 1
    # A save without a state is reached by replay from the stored one before it.
    missing = next(i for i in range(len(traj)) if i not in set(stored.tolist()))
    with pytest.raises(gflow.FileFormatError, match="stores no state"):
        traj.state(missing)
    replayed = traj.at(float(traj.save_times[missing]), exact=True)
    assert np.allclose(replayed.f_train, traj.outputs(missing), rtol=1e-3, atol=1e-4)
    assert not traj.has("saves/dstate")  # derivatives only when asked


def _million(width: int = 1000) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1))


def test_a_million_parameter_model_with_the_default_save_policy_writes_under_200_MB(tmp_path):
    from sklearn.datasets import load_digits

    x, c = load_digits(return_X_y=True)
    x = (x - 8.0) / 8.0
    y = np.where(c % 2 == 0, 1.0, -1.0)
    data = (x[:100], y[:100], x[100:150], y[100:150])
    torch.manual_seed(0)
    net = _million()
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params > 1_000_000
    cfg = gflow.RunConfig(t_end=1.0, saves=100, save_t_min=1e-3, max_steps=3)  # the default solver and policy
    out = tmp_path / "big.h5"
    traj = gflow.run(cfg, out, model=net, data=data, progress=False)
    assert traj.status == "stopped"
    traj = gflow.resume(out, model=net, data=data, max_steps=10**6, progress=False)
    assert traj.status == "finished"
    disk = traj.storage()
    assert disk["saves"] == 101 and disk["bytes"] < 200e6, disk
    # 64 MB of states at most: 8 of 8.5 MB each, the first and last among them.
    assert 2 <= disk["states"] <= 8 and traj.stored_states[-1] == len(traj) - 1
    theta = traj.kernel(-1, n=20)
    assert theta.shape == (20, 20) and torch.allclose(theta, theta.T)
