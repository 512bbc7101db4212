"""The paper's stepper against an independent high-accuracy integration (issue: core)."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import gflow
from gflow import RunConfig


@pytest.mark.slow
def test_paper_stepper_learns_the_same_function_as_a_high_accuracy_reference(tmp_path):
    cfg = RunConfig(ptr=1000, depth=3, width=100, act="softplus", alpha=1.0, max_dgrad=1e-4, t_end=1e4,
                    solver="gradient-ratio")
    traj = gflow.run(cfg, tmp_path / "run.h5", progress=False)
    assert traj.status == "finished"
    flow = gflow.build(cfg)

    def field(t, y):
        return flow.vector_field(t, torch.from_numpy(y)).numpy()

    ref = solve_ivp(field, (0.0, cfg.t_end), flow.y0.numpy(), method="DOP853", rtol=1e-8, atol=1e-10)
    assert ref.status == 0
    f_ref = flow.outputs(torch.from_numpy(ref.y[:, -1]), flow.x_train).numpy()
    f0 = flow.f0_train.numpy()
    error = np.linalg.norm(traj.outputs(-1) - f_ref) / np.linalg.norm(f_ref - f0)
    assert error < 5e-3  # measured 6e-4; the bar is "well under 5e-2"


def test_a_float32_run_of_the_default_method_is_as_accurate_and_as_cheap_as_float64_from_the_same_w0(tmp_path):
    """Against a float64 run at rtol 1e-9 from float32's own w0 (cast exactly): the float32
    run's error of f(T) is within 3x the float64 run's, at most 1.1x its evaluations. With
    the forward differences' step scaled by ||y|| in float32 (e ~ 0.04 here) it took 707
    evaluations to float64's 493 (solvers.krylov.difference_step)."""
    import copy

    cfg = RunConfig(ptr=300, pte=10, width=64, t_end=1000.0, saves=3, dtype="float32")
    module = copy.deepcopy(gflow.build(cfg).model.module).to(torch.float64)
    single = gflow.run(cfg, tmp_path / "f32.h5", progress=False)
    ref = gflow.run(cfg.replace(dtype="float64", rtol=1e-9), tmp_path / "ref.h5", model=module, progress=False)
    double = gflow.run(cfg.replace(dtype="float64"), tmp_path / "f64.h5", model=copy.deepcopy(module), progress=False)
    f_ref, f0 = ref.outputs(-1), ref.outputs(0)

    def error(traj):
        return np.linalg.norm(traj.outputs(-1).astype(np.float64) - f_ref) / np.linalg.norm(f_ref - f0)

    assert error(single) <= 3 * error(double)  # measured 5.7e-5 against 1.5e-4
    assert single.summary()["evals"] <= 1.1 * double.summary()["evals"]  # measured 508 against 493
