"""Every method on the network problem: convergence to a reference, dense output."""

import numpy as np
import pytest
import torch

import gflow
from gflow import RunConfig
from gflow.bench import reference

from .configs import TINY


def _error(cfg, f_ref, tmp_path, name):
    traj = gflow.run(cfg, tmp_path / f"{name}.h5", progress=False)
    assert traj.status == "finished", traj.stop_reason
    f0 = traj.read("init/f0_train")
    return np.linalg.norm(traj.outputs(-1) - f_ref) / np.linalg.norm(f_ref - f0)


@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("name", ["dopri5", "bosh3", "fehlberg2"])
def test_adaptive_methods_converge_to_the_reference_as_rtol_tightens(tmp_path, name, momentum):
    cfg = TINY.replace(solver=name, flow="momentum" if momentum else None)
    f_ref = reference(cfg, rtol=1e-10)
    errors = [_error(cfg.replace(rtol=r, atol=r * 1e-3), f_ref, tmp_path, f"{name}{r}") for r in (1e-3, 1e-6, 1e-9)]
    # Loose tolerances are not proportional for adaptive RK; across 3 decades they are.
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-6, errors


@pytest.mark.parametrize("name", ["rk4", "midpoint"])
def test_fixed_step_methods_converge_as_dt_shrinks(tmp_path, name):
    f_ref = reference(TINY, rtol=1e-10)
    errors = [_error(TINY.replace(solver=name, dt=dt), f_ref, tmp_path, f"{name}{dt}") for dt in (0.2, 0.1)]
    assert errors[1] < errors[0] / 3, errors


@pytest.mark.parametrize("solver", ["gradient-ratio", "momentum"])
def test_native_steppers_converge_as_max_dgrad_tightens(tmp_path, solver):
    cfg = TINY.replace(solver=solver)
    f_ref = reference(cfg, rtol=1e-10)
    errors = [_error(cfg.replace(max_dgrad=r), f_ref, tmp_path, f"{solver}{r}") for r in (1e-3, 1e-4, 1e-5)]
    assert errors[0] > errors[1] > errors[2], errors


def test_chebyshev_converges_to_the_reference_as_rtol_tightens_at_second_order(tmp_path):
    f_ref = reference(TINY, rtol=1e-10)
    cfg = TINY.replace(solver="chebyshev")
    errors = [_error(cfg.replace(rtol=r, atol=r * 1e-3), f_ref, tmp_path, f"cheb{r}") for r in (1e-3, 1e-5, 1e-7)]
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-5, errors


@pytest.mark.parametrize("momentum", [False, True])
def test_exponential_rosenbrock_converges_to_the_reference_as_rtol_tightens(tmp_path, momentum):
    cfg = TINY.replace(solver="exponential", flow="momentum" if momentum else None)
    f_ref = reference(cfg, rtol=1e-10)
    errors = [_error(cfg.replace(rtol=r, atol=r * 1e-3), f_ref, tmp_path, f"exp{r}") for r in (1e-3, 1e-5, 1e-7)]
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-6, errors


def test_inconsistent_flow_and_fixed_step_without_dt_are_config_errors():
    with pytest.raises(gflow.ConfigError, match="flow"):
        RunConfig(solver="momentum", flow="gradient")
    with pytest.raises(gflow.ConfigError, match="chebyshev needs a real spectrum"):
        RunConfig(solver="chebyshev", flow="momentum")
    with pytest.raises(gflow.ConfigError, match="dt = None: solver rk4 takes fixed steps"):
        RunConfig(solver="rk4")


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    cfg = TINY.replace(solver="dopri5", rtol=1e-10, atol=1e-12, saves=40)
    return gflow.run(cfg, tmp_path_factory.mktemp("dense") / "d.h5", progress=False)


def test_exact_replay_lands_on_the_uninterrupted_runs_saved_states(dense_run):
    # Replaying from save i up to save i+1 reproduces the stored state at i+1.
    for i in (3, 20):
        point = dense_run.at(float(dense_run.save_times[i + 1]) * (1 - 1e-15), exact=True)
        assert torch.allclose(point.state, dense_run.state(i + 1), rtol=1e-7, atol=1e-10)
    t = float(dense_run.save_times[10])
    assert torch.equal(dense_run.at(t).state, dense_run.state(10))


def test_hermite_dense_output_is_fourth_order_in_save_spacing(tmp_path):
    # Runs saved at 3, 5, 9 log-spaced times: Hermite at the midpoint of the second
    # interval, against the exact replay; the observed order in the interval length h. The
    # steps land on the save times (interpolate = false), so the stored states are step ends
    # at rtol 1e-12: with torchdiffeq's dense output serving them instead, its error (~2e-9
    # here) floors the smallest interval's (orders 3.85, 2.40 against 4.03, 4.01).
    cfg = TINY.replace(solver="dopri8", rtol=1e-12, atol=1e-14, save_t_min=1.0, t_end=3.0, save_derivatives=True,
                       interpolate=False)
    errors, widths = [], []
    for n in (2, 4, 8):
        traj = gflow.run(cfg.replace(saves=n + 1), tmp_path / f"h{n}.h5", progress=False)
        t1, t2 = float(traj.save_times[1]), float(traj.save_times[2])
        errors.append(float((traj.at(0.5 * (t1 + t2)).state - traj.at(0.5 * (t1 + t2), exact=True).state).norm()))
        widths.append(t2 - t1)
    orders = [np.log(errors[k] / errors[k + 1]) / np.log(widths[k] / widths[k + 1]) for k in range(2)]
    assert all(3.5 < p < 4.6 for p in orders), (errors, widths, orders)


# The benchmark problems in miniature: digits FC under gradient flow at three alphas, the
# momentum flow, a CNN and float32.
MINI = TINY.replace(solver=RunConfig().solver, ptr=60, width=16, t_end=300.0, saves=20, save_t_min=0.1)
MINIATURES = {
    "gf-a1e-2": MINI.replace(alpha=1e-2), "gf-a1": MINI, "gf-a1e2": MINI.replace(alpha=1e2),
    "momentum": MINI.replace(flow="momentum"),
    "cnn": MINI.replace(arch="cnn", width=4, depth=2, downsample=2, t_end=100.0),
    "float32": MINI.replace(dtype="float32"),
}


@pytest.mark.parametrize("name", list(MINIATURES))
def test_the_default_method_is_robust_and_at_least_as_accurate_as_the_papers_stepper(tmp_path, name):
    cfg = MINIATURES[name]
    # float32 draws another w0: its reference is dopri8 in float32, as tight as float32 allows.
    f_ref = reference(cfg, rtol=1e-10 if cfg.dtype == "float64" else 1e-6)
    paper = cfg.replace(solver="momentum" if cfg.momentum else "gradient-ratio", flow=None)
    default_error = _error(cfg, f_ref, tmp_path, "default")
    paper_error = _error(paper, f_ref, tmp_path, "paper")
    assert default_error <= paper_error, (default_error, paper_error)


def test_the_same_rtol_gives_the_same_accuracy_at_every_alpha(tmp_path):
    """Error control on the displacement from w0: f(T)'s relative error at rtol 1e-3 stays
    within a factor 10 across alpha = 1e-2, 1, 1e2 (relative to |w| it would fall with
    alpha like the motion of w does)."""
    errors = []
    for alpha in (1e-2, 1.0, 1e2):
        cfg = MINI.replace(solver="exponential", alpha=alpha, rtol=1e-3, atol=1e-9)
        errors.append(_error(cfg, reference(cfg, rtol=1e-10), tmp_path, f"a{alpha}"))
    assert max(errors) < 10 * min(errors), errors


@pytest.mark.parametrize("solver", ["cvode", "tsit5"])
def test_anchor_methods_converge_to_the_reference_on_a_network(tmp_path, solver):
    pytest.importorskip("sksundae" if solver == "cvode" else "torchode", reason="pip install -e '.[stiff]'")
    cfg = TINY.replace(solver=solver)
    f_ref = reference(cfg, rtol=1e-10)
    errors = [_error(cfg.replace(rtol=r, atol=r * 1e-3), f_ref, tmp_path, f"{solver}{r}") for r in (1e-3, 1e-5, 1e-7)]
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-5, errors
