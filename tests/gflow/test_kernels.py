import pytest
import torch

import gflow
from gflow import GflowError, RunConfig
from gflow.kernels import jacobian, ntk, ntk_loop, relative_change

from . import usercode

SMALL = RunConfig(ptr=60, pte=10, width=16, depth=3)


@pytest.fixture(scope="module")
def flow():
    return gflow.build(SMALL)


@pytest.mark.parametrize("method", ["structured", "jacobian"])
def test_ntk_matches_a_per_sample_autograd_loop(flow, method):
    w = flow.w0 + 0.3 * torch.randn(flow.n_params, generator=torch.Generator().manual_seed(0))
    x1, x2 = flow.x_train[:40], flow.x_train[20:60]
    reference = ntk_loop(flow.model, w, x1, x2)
    theta = gflow.ntk(flow.model, w, x1, x2, method=method)
    assert torch.allclose(theta, reference, rtol=0, atol=1e-10 * float(reference.abs().max()))
    sym = gflow.ntk(flow.model, w, x1, method=method)
    assert torch.allclose(sym, ntk_loop(flow.model, w, x1), rtol=0, atol=1e-10 * float(sym.abs().max()))
    assert torch.allclose(sym, sym.T, rtol=0, atol=1e-13 * float(sym.abs().max()))


@pytest.mark.parametrize("parametrization", ["ntk", "mean-field", "standard"])
@pytest.mark.parametrize("act", ["softplus", "relu", "tanh"])
def test_structured_ntk_matches_the_loop_for_every_parametrization_and_activation(parametrization, act):
    flow = gflow.build(SMALL.replace(parametrization=parametrization, act=act, depth=2, kappa=0.5))
    w = flow.w0 + 0.3 * torch.randn(flow.n_params, generator=torch.Generator().manual_seed(1))
    x = flow.x_train[:30]
    reference = ntk_loop(flow.model, w, x)
    assert torch.allclose(ntk(flow.model, w, x, method="structured"), reference,
                          rtol=0, atol=1e-10 * float(reference.abs().max()))


def test_ntk_of_the_linearized_model_is_the_initial_kernel_at_every_w():
    flow = gflow.build(SMALL.replace(linearized=True))
    w = flow.w0 + 0.3 * torch.randn(flow.n_params, generator=torch.Generator().manual_seed(2))
    x = flow.x_train[:25]
    theta0 = ntk_loop(flow.model.model, flow.w0, x)
    for method in ("structured", "jacobian"):
        assert torch.allclose(ntk(flow.model, w, x, method=method), theta0, rtol=0, atol=1e-10 * float(theta0.abs().max()))


@pytest.mark.parametrize("method", ["structured", "jacobian"])
@pytest.mark.parametrize("rows", [1, 7, 25])
def test_blocked_kernel_under_a_memory_budget_equals_the_full_one(flow, rows, method):
    x = flow.x_train[:50]
    full = ntk(flow.model, flow.w0, x, method=method)
    # forces blocks of `rows` rows: two rows of Jacobian each side, or two Gram rows of width n2
    row_size = flow.n_params if method == "jacobian" else len(x)
    budget = 2 * rows * row_size * 8
    assert torch.allclose(ntk(flow.model, flow.w0, x, max_memory=budget, method=method), full, rtol=1e-12, atol=1e-12)
    budget = 2 * rows * (flow.n_params if method == "jacobian" else 13) * 8
    assert torch.allclose(ntk(flow.model, flow.w0, x, x[:13], max_memory=budget, method=method), full[:, :13],
                          rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["structured", "jacobian"])
def test_kernel_memory_too_small_names_the_flag(flow, method):
    with pytest.raises(GflowError, match="kernel-memory"):
        ntk(flow.model, flow.w0, flow.x_train[:5], max_memory=10, method=method)


def test_out_of_memory_names_the_flags_that_lower_memory_use(flow, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(gflow.kernels, "_ntk_structured", exhausted)
    with pytest.raises(GflowError, match="out of memory computing the NTK on 30 points.*--kernel-memory.*--kernel-n"):
        ntk(flow.model, flow.w0, flow.x_train[:30])


def test_structured_ntk_is_refused_for_a_cnn_and_unknown_methods_are_named(flow):
    cnn = gflow.build(SMALL.replace(arch="cnn", width=4, depth=1))
    with pytest.raises(GflowError, match="structured NTK needs dense layers.*method='jacobian'"):
        ntk(cnn.model, cnn.w0, cnn.x_train[:3], method="structured")
    with pytest.raises(ValueError, match="method = 'fast': must be one of auto, structured, jacobian"):
        ntk(flow.model, flow.w0, flow.x_train[:3], method="fast")


def test_jacobian_rows_are_per_sample_gradients(flow):
    x = flow.x_train[:3]
    J = jacobian(flow.model, flow.w0, x)
    for i in range(3):
        w = flow.w0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(flow.model(w, x[i : i + 1]).sum(), w)
        assert torch.allclose(J[i, 0], g, rtol=1e-12, atol=1e-14)


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


def test_kernel_benchmark_runs_on_a_tiny_problem_and_checks_agreement(tmp_path):
    import subprocess
    import sys

    import pandas as pd

    proc = subprocess.run([sys.executable, "benchmarks/bench_kernels.py", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "kernels.csv")
    assert list(table["points"]) == [50, 100]
    assert (table["max_abs_diff_over_max"] < 1e-10).all()
    full, sub_block = table.iloc[0], table.iloc[1]
    assert full["loop_s"] > 0 and full["jjt_s"] > 0 and full["jacobian_path_s"] > 0
    assert pd.isna(sub_block["loop_s"])  # above --reference-max: checked on a sub-block only


# --- k outputs, and the user's modules -----------------------------------------------------------



@pytest.fixture(scope="module")
def ten_class_fc():
    return gflow.build(SMALL.replace(labels="classes", depth=2, width=12, loss="cross-entropy"))


@pytest.mark.parametrize("outputs", ["trace", "full"])
@pytest.mark.parametrize("method", ["structured", "jacobian"])
@pytest.mark.parametrize("rows", [None, 3])
def test_the_kernel_of_k_outputs_matches_the_per_sample_loop(ten_class_fc, outputs, method, rows):
    flow = ten_class_fc
    assert flow.outputs_k == 10
    w = flow.w0 + 0.3 * torch.randn(flow.n_params, generator=torch.Generator().manual_seed(3))
    x1, x2 = flow.x_train[:9], flow.x_train[5:12]
    reference = ntk_loop(flow.model, w, x1, x2, outputs=outputs)
    m = 10 if outputs == "full" else 1
    assert reference.shape == (9 * m, 7 * m)
    budget = {"jacobian": 2 * (rows or 0) * 10 * flow.n_params * 8, "structured": 2 * (rows or 0) * 7 * m * m * 8}[method]
    kwargs = {"max_memory": budget} if rows else {}
    theta = ntk(flow.model, w, x1, x2, method=method, outputs=outputs, **kwargs)
    assert torch.allclose(theta, reference, rtol=0, atol=1e-10 * float(reference.abs().max()))
    sym = ntk(flow.model, w, x1, method=method, outputs=outputs, **kwargs)
    assert torch.allclose(sym, ntk_loop(flow.model, w, x1, outputs=outputs), rtol=0,
                          atol=1e-10 * float(sym.abs().max()))
    if outputs == "full":  # the trace kernel sums the full kernel's diagonal output blocks
        blocks = sym.reshape(9, 10, 9, 10).diagonal(dim1=1, dim2=3).sum(-1)
        assert torch.allclose(blocks, ntk(flow.model, w, x1, method=method), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("outputs", [1, 3])
def test_the_kernel_of_a_user_module_matches_the_per_sample_loop(outputs):
    flow = gflow.build(RunConfig(loss="mse"), model=usercode.mlp(width=10, outputs=outputs),
                       data=usercode.digits(12, 4, classes=3) if outputs > 1 else usercode.parity_digits(12, 4))
    assert not flow.model.has_tangent_factors
    w = flow.w0 + 0.2 * torch.randn(flow.n_params, generator=torch.Generator().manual_seed(4))
    for kind in ("trace", "full"):
        reference = ntk_loop(flow.model, w, flow.x_train, outputs=kind)
        theta = ntk(flow.model, w, flow.x_train, outputs=kind)
        assert torch.allclose(theta, reference, rtol=0, atol=1e-10 * float(reference.abs().max()))


def test_kernel_snapshots_of_a_k_output_run_store_the_kernel_asked_for(tmp_path):
    cfg = SMALL.replace(labels="classes", classes=(0, 1, 2), ptr=30, width=10, depth=2, loss="cross-entropy",
                        t_end=5.0, saves=3, kernel_n=6, kernel_every=1)
    trace = gflow.run(cfg, tmp_path / "trace.h5", progress=False)
    full = gflow.run(cfg.replace(kernel_outputs="full"), tmp_path / "full.h5", progress=False)
    assert trace.read("kernel/theta").shape == (4, 6, 6) and full.read("kernel/theta").shape == (4, 18, 18)
    assert trace.read_attr("kernel", "outputs") == "trace" and full.read_attr("kernel", "outputs") == "full"
    for traj in (trace, full):
        stored = torch.from_numpy(traj.read("kernel/theta")[-1])
        assert torch.allclose(stored, traj.kernel(len(traj) - 1, n=6), rtol=1e-10, atol=1e-12)
        assert traj.read("kernel/change")[-1] > 0


def test_the_last_save_always_gets_a_kernel_snapshot(tmp_path):
    cfg = SMALL.replace(ptr=30, width=8, depth=2, t_end=5.0, saves=5, kernel_n=6, kernel_every=4)
    traj = gflow.run(cfg, tmp_path / "r.h5", progress=False)
    assert list(traj.read("kernel/t")) == [traj.save_times[0], traj.save_times[4], traj.save_times[-1]]
    assert len(traj.save_times) == 6


def test_alignment_is_one_for_the_targets_own_gram_matrix_and_matches_the_formula():
    from gflow.kernels import alignment

    y = torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64)
    assert alignment(torch.outer(y, y), y) == pytest.approx(1.0)
    theta = torch.randn(4, 4, dtype=torch.float64)
    theta = theta @ theta.T
    assert alignment(theta, y) == pytest.approx(float(y @ theta @ y / (theta.norm() * y.dot(y))))
    classes = torch.tensor([0, 2, 1, 2])
    onehot = torch.nn.functional.one_hot(classes, 3).double()
    assert alignment(onehot @ onehot.T, classes, outputs=3) == pytest.approx(1.0)
    full = torch.kron(onehot @ onehot.T, torch.eye(3, dtype=torch.float64))  # (n k) x (n k), output fastest
    v = onehot.reshape(-1)
    assert alignment(full, classes, outputs=3) == pytest.approx(float(v @ full @ v / (full.norm() * v.dot(v))))


def test_effective_rank_counts_equal_directions():
    from gflow.kernels import effective_rank

    assert effective_rank(torch.tensor([2.0, 2.0, 2.0, 0.0])) == pytest.approx(3.0)
    assert effective_rank(torch.tensor([5.0, 0.0, -1e-17])) == pytest.approx(1.0)
