import pytest
import torch

import gflow
from gflow import GflowError, RunConfig
from gflow.kernels import jacobian, ntk, ntk_loop, relative_change

SMALL = RunConfig(ptr=60, pte=10, width=16, depth=3)


@pytest.fixture(scope="module")
def flow():
    return gflow.build(SMALL)


def test_ntk_matches_a_per_sample_autograd_loop(flow):
    w = flow.w0 + 0.3 * torch.randn(flow.n_params, generator=torch.Generator().manual_seed(0))
    x1, x2 = flow.x_train[:40], flow.x_train[20:60]
    reference = ntk_loop(flow.model, w, x1, x2)
    assert torch.allclose(gflow.ntk(flow.model, w, x1, x2), reference, rtol=0, atol=1e-10 * float(reference.abs().max()))
    sym = gflow.ntk(flow.model, w, x1)
    assert torch.allclose(sym, ntk_loop(flow.model, w, x1), rtol=0, atol=1e-10 * float(sym.abs().max()))
    assert torch.equal(sym, sym.T) or torch.allclose(sym, sym.T, atol=1e-13)


@pytest.mark.parametrize("rows", [1, 7, 25])
def test_blocked_kernel_under_a_memory_budget_equals_the_full_one(flow, rows):
    x = flow.x_train[:50]
    full = ntk(flow.model, flow.w0, x)
    budget = 2 * rows * flow.n_params * 8  # forces blocks of `rows` rows on both sides
    assert torch.allclose(ntk(flow.model, flow.w0, x, max_memory=budget), full, rtol=1e-12, atol=1e-12)
    assert torch.allclose(ntk(flow.model, flow.w0, x, x[:13], max_memory=budget), full[:, :13], rtol=1e-12, atol=1e-12)


def test_kernel_memory_too_small_names_the_flag(flow):
    with pytest.raises(GflowError, match="kernel-memory"):
        ntk(flow.model, flow.w0, flow.x_train[:5], max_memory=100)


def test_out_of_memory_names_the_flags_that_lower_memory_use(flow, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(gflow.kernels, "jacobian", exhausted)
    with pytest.raises(GflowError, match="out of memory computing the NTK on 30 points.*--kernel-memory.*--kernel-n"):
        ntk(flow.model, flow.w0, flow.x_train[:30])


def test_jacobian_rows_are_per_sample_gradients(flow):
    x = flow.x_train[:3]
    J = jacobian(flow.model, flow.w0, x)
    for i in range(3):
        w = flow.w0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(flow.model(w, x[i : i + 1]).sum(), w)
        assert torch.allclose(J[i], g, rtol=1e-12, atol=1e-14)


def test_relative_change_is_a_frobenius_ratio():
    a = torch.eye(3)
    assert relative_change(2 * a, a) == pytest.approx(1.0)


def test_kernel_snapshots_during_a_run_agree_with_kernels_of_stored_states(tmp_path):
    cfg = SMALL.replace(t_end=5.0, saves=6, save_t_min=0.1, kernel_n=20, kernel_every=2, alpha=0.1)
    traj = gflow.run(cfg, tmp_path / "k.h5", progress=False)
    times, change = traj.kernel_change()
    assert len(times) == 4 and times[0] == 0.0 and change[0] == 0.0  # saves 0, 2, 4, 6
    assert torch.allclose(torch.from_numpy(traj.read("init/theta")), traj.kernel(0, 20), rtol=1e-12)
    i = int(list(traj.save_times).index(times[-1]))
    assert change[-1] == pytest.approx(relative_change(traj.kernel(i, 20), traj.kernel(0, 20)), rel=1e-10)
    assert change[-1] > 0.01  # small alpha: the kernel moves


def test_ntk_of_a_cnn_matches_the_per_sample_loop():
    flow = gflow.build(RunConfig(arch="cnn", ptr=12, pte=4, width=4, depth=2))
    theta = ntk(flow.model, flow.w0, flow.x_train)
    assert torch.allclose(theta, ntk_loop(flow.model, flow.w0, flow.x_train), rtol=1e-12, atol=1e-14)
