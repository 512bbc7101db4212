"""The Hessian spectrum against an independent dense computation, and as stored in a run."""

import h5py
import numpy as np
import pytest
import torch

import gflow
from gflow import RunConfig
from gflow.hessian import hessian_vector_product, top_eigenvalues

from .configs import TINY


@pytest.fixture(scope="module")
def tiny():
    flow = gflow.build(TINY.replace(ptr=40, width=12))
    w = flow.w0 + 0.05 * torch.randn(flow.n_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dense = torch.autograd.functional.hessian(flow.training_loss, w)
    return flow, w, dense


def test_hessian_vector_products_equal_the_dense_hessian_times_the_vector(tiny):
    flow, w, dense = tiny
    v = torch.randn(flow.n_params, dtype=torch.float64)
    assert torch.allclose(hessian_vector_product(flow, w)(v), dense @ v, rtol=1e-12, atol=1e-14)


def test_hessian_vector_products_match_finite_differences_of_the_gradient(tiny):
    flow, w, _ = tiny
    v = torch.randn(flow.n_params, dtype=torch.float64)
    eps = 1e-5
    fd = (flow.loss_and_grad(w + eps * v)[1] - flow.loss_and_grad(w - eps * v)[1]) / (2 * eps)
    assert torch.allclose(hessian_vector_product(flow, w)(v), fd, rtol=1e-7, atol=1e-10)


def test_lanczos_top_five_match_the_dense_eigendecomposition(tiny):
    flow, w, dense = tiny
    exact = torch.linalg.eigvalsh(dense).flip(0)[:5].numpy()
    spectrum = top_eigenvalues(flow, w, k=5, tol=1e-12)
    assert np.allclose(spectrum.values, exact, rtol=1e-8, atol=0)
    assert np.all(np.diff(spectrum.values) <= 0) and spectrum.products > 0
    # The eigenvectors are the dense ones (up to sign).
    top = torch.from_numpy(spectrum.vectors[:, 0])
    assert float((dense @ top - exact[0] * top).norm()) < 1e-8 * exact[0]


def test_a_warm_start_from_nearby_vectors_needs_fewer_products(tiny):
    flow, w, _ = tiny
    cold = top_eigenvalues(flow, w, k=3, tol=1e-10)
    warm = top_eigenvalues(flow, w + 1e-4 * w, k=3, tol=1e-10, start=cold.vectors)
    assert warm.products < cold.products and np.allclose(warm.values, cold.values, rtol=1e-2)


def test_a_run_stores_the_spectrum_at_every_save_as_a_fresh_computation_gives(tmp_path):
    traj = gflow.run(TINY.replace(hessian_k=3, hessian_tol=1e-10), tmp_path / "h.h5", progress=False)
    times, values = traj.hessian_spectrum()
    assert values.shape == (len(traj), 3) and np.array_equal(times, traj.save_times)
    assert np.all(np.diff(values, axis=1) <= 0)
    flow = traj.flow
    again = top_eigenvalues(flow, flow.weights(traj.state(-1).to(flow.w0)), k=3, tol=1e-12).values
    assert np.allclose(values[-1], again, rtol=1e-8)
    assert np.all(traj.hessian_products() > 0)
    table = gflow.catalog(tmp_path)
    assert table["sharpness"].iloc[0] == pytest.approx(values[-1, 0])


HESSIAN_RUN = RunConfig(ptr=60, pte=20, width=12, t_end=50.0, saves=9, hessian_k=2)  # the default method


def _stopped_halfway(tmp_path):
    whole = gflow.run(HESSIAN_RUN, tmp_path / "whole.h5", progress=False)
    steps = int(whole.summary()["step"])
    part = gflow.run(HESSIAN_RUN.replace(max_steps=steps // 2), tmp_path / "part.h5", progress=False)
    assert part.status == "stopped" and 2 < len(part) < len(whole)
    return whole, part


def test_a_resumed_run_continues_its_spectra_bitwise_from_the_checkpoints_eigenvectors(tmp_path):
    whole, part = _stopped_halfway(tmp_path)
    done = gflow.resume(part.path, max_steps=10**6, progress=False)
    assert done.status == "finished"
    assert np.array_equal(done.read("saves/hessian"), whole.read("saves/hessian"))
    assert np.array_equal(done.read("saves/hessian_products"), whole.read("saves/hessian_products"))


def test_a_checkpoint_without_eigenvectors_resumes_from_a_cold_start_to_the_spectrums_tolerance(tmp_path):
    whole, part = _stopped_halfway(tmp_path)
    with h5py.File(part.path, "r+") as f:  # as a file written before the checkpoint held them
        del f["checkpoint/hessian_vectors"]
    done = gflow.resume(part.path, max_steps=10**6, progress=False)
    assert np.array_equal(done.state(-1), whole.state(-1))
    resumed, uninterrupted = done.read("saves/hessian"), whole.read("saves/hessian")
    assert not np.array_equal(resumed, uninterrupted)  # a cold start: other rounding
    assert np.allclose(resumed, uninterrupted, rtol=10 * HESSIAN_RUN.hessian_tol, atol=0)


def test_checkpoint_eigenvectors_of_the_wrong_shape_are_a_format_error(tmp_path):
    _, part = _stopped_halfway(tmp_path)
    with h5py.File(part.path, "r+") as f:
        del f["checkpoint/hessian_vectors"]
        f["checkpoint"].create_dataset("hessian_vectors", data=np.zeros((2, 3, 2)))
    with pytest.raises(gflow.FileFormatError, match="hessian_vectors should be floating point of shape"):
        gflow.resume(part.path, max_steps=10**6, progress=False)
    assert gflow.open(part.path).status == "stopped" and not part.path.with_name("part.h5.lock").exists()


def test_a_run_without_a_spectrum_says_how_to_get_one(tmp_path):
    traj = gflow.run(TINY, tmp_path / "n.h5", progress=False)
    with pytest.raises(gflow.GflowError, match="hessian_k > 0"):
        traj.hessian_spectrum()


def test_hessian_k_must_be_a_count():
    with pytest.raises(gflow.ConfigError, match="hessian_k"):
        gflow.RunConfig(hessian_k=-1)


def test_the_exponential_steppers_top_ritz_value_agrees_with_lanczos_at_the_same_state(tiny):
    from solvers import CountingProblem, ExponentialRosenbrock

    flow, w, _ = tiny
    stepper = ExponentialRosenbrock(krylov_tol=1e-13, max_krylov=40)
    problem = CountingProblem(flow)
    stepper.step(problem.evaluate(0.0, w), 50.0, problem)
    ritz = stepper.diagnostics()["ritz_max"]
    assert ritz == pytest.approx(top_eigenvalues(flow, w, k=1, tol=1e-12).values[0], rel=1e-6)


def test_an_exponential_run_records_a_ritz_value_per_step_near_the_stored_sharpness(tmp_path):
    # The soft hinge, smooth at w0 (where torch's softplus switched formula and its ~2e-9
    # jump made forward-difference products ~1% non-symmetric, breaking the bound below).
    traj = gflow.run(TINY.replace(solver="exponential", loss="softhinge", hessian_k=1, saves=2, save_t_min=1.0),
                     tmp_path / "r.h5", progress=False)
    steps = traj.steps
    assert "ritz_max" in steps and np.isfinite(steps["ritz_max"]).all()
    # The first step starts at w0, where the stored spectrum was taken: a lower bound, close.
    sharpness = traj.hessian_spectrum()[1][0, 0]
    assert 0.5 * sharpness < steps["ritz_max"].iloc[0] <= sharpness * (1 + 1e-6)


def test_a_float32_runs_spectrum_stays_finite_once_margins_pass_where_the_loss_underflows(tmp_path):
    # margins reach y a > 5.4 here: the soft hinge's argument falls below -88.7, where e^-x overflows in float32
    cfg = gflow.RunConfig(ptr=200, pte=100, width=30, t_end=300.0, saves=11, hessian_k=2, dtype="float32")
    traj = gflow.run(cfg, tmp_path / "f32.h5", progress=False)
    assert traj.status == "finished"
    _, spectrum = traj.hessian_spectrum()
    assert np.isfinite(spectrum).all() and spectrum[-1, 0] > 0
    flow = gflow.build(cfg)
    a = flow.scaled(torch.as_tensor(traj.outputs(-1)), "train")
    assert float((flow.y_train * a).max()) > 5.4


def test_a_hessian_product_that_is_not_finite_is_one_clear_error(tiny, monkeypatch):
    import gflow.hessian as hessian

    flow, w, _ = tiny
    monkeypatch.setattr(hessian, "hessian_vector_product", lambda flow, w: lambda v: v * float("nan"))
    with pytest.raises(gflow.GflowError, match="a Hessian-vector product is not finite"):
        top_eigenvalues(flow, w, 2)
