import numpy as np
import pytest
import torch

import gflow
from gflow import ConfigError, GflowError, RunConfig

from . import usercode

SMALL = dict(ptr=40, pte=10, width=12, depth=2)


@pytest.mark.parametrize("loss", ["softhinge", "qhinge", "mse"])
@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("model", [{}, {"arch": "cnn"}, {"linearized": True}], ids=["fc", "cnn", "linearized"])
def test_gradient_matches_central_finite_differences(loss, centered, model):
    _finite_difference_check(gflow.build(RunConfig(loss=loss, centered=centered, alpha=0.7, **SMALL, **model)))


def test_loss_is_the_papers_scaled_and_centred_loss():
    cfg = RunConfig(alpha=3.0, loss="mse", **SMALL)
    flow = gflow.build(cfg)
    w = flow.w0 + 0.05
    f = flow.model(w, flow.x_train)
    expected = (((3.0 * (f - flow.f0_train) - flow.y_train) ** 2 / 2).mean() / 9.0).item()
    loss, _, outs = flow.loss_and_grad(w)
    assert float(loss) == pytest.approx(expected, rel=1e-12)
    assert torch.allclose(outs, f)
    assert float(flow.loss_and_grad(flow.w0)[0]) == pytest.approx(0.5 / 9.0)  # f = f0: a = 0, l = y^2/2


def test_chunked_evaluation_equals_full_batch():
    full = gflow.build(RunConfig(**SMALL))
    chunked = gflow.build(RunConfig(chunk=7, **SMALL))
    w = full.w0 * 1.01
    for a, b in zip(full.loss_and_grad(w), chunked.loss_and_grad(w)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_vector_field_is_minus_gradient_and_momentum_field_is_the_papers():
    flow = gflow.build(RunConfig(**SMALL))
    _, g, _ = flow.loss_and_grad(flow.w0)
    assert torch.equal(flow.vector_field(0.0, flow.y0), -g)
    mom = gflow.build(RunConfig(solver="momentum", tau=0.5, **SMALL))
    assert mom.y0.shape == (2 * mom.n_params,)
    v = torch.randn(mom.n_params)
    dydt = mom.vector_field(0.0, torch.cat([mom.w0, v]))
    assert torch.equal(dydt[: mom.n_params], v)
    assert torch.allclose(dydt[mom.n_params :], -(v + g) / 0.5)


def test_a_gradient_flow_evaluation_holds_the_gradient_once_as_minus_dydt():
    flow = gflow.build(RunConfig(**SMALL))
    _, g, _ = flow.loss_and_grad(flow.w0)
    ev = flow.evaluate(0.0, flow.y0)
    assert "grad" not in ev.aux  # no second state-sized copy of -dy/dt
    assert flow.grad_key == "dydt" and torch.equal(ev.value(flow.grad_key), -g)
    assert ev.sq_norm(flow.grad_key) == float(g.dot(g))  # ||grad L||^2, bit for bit
    mom = gflow.build(RunConfig(solver="momentum", tau=0.5, **SMALL))
    assert mom.grad_key == "grad" and torch.equal(mom.evaluate(0.0, mom.y0).value("grad"), g)
    for flow in ("modified", "central"):  # dy/dt is not -grad L there: the gradient is held apart
        other = gflow.build(RunConfig(flow=flow, lr=0.5, **SMALL))
        assert other.grad_key == "grad" and torch.allclose(other.evaluate(0.0, other.y0).value("grad"), g)


def test_public_attributes_of_build():
    flow = gflow.build(RunConfig(**SMALL))
    assert flow.x_train.shape == (40, 64) and flow.y_test.shape == (10,)
    assert torch.equal(flow.model(flow.y0, flow.x_test), flow.f0_test)
    assert flow.y0.dtype == torch.float64


# --- your own model, data and loss -------------------------------------------------------------

USER = RunConfig(model="tests.gflow.usercode:mlp", data="tests.gflow.usercode:parity_digits",
                 model_args={"width": 12}, data_args={"n_train": 30, "n_test": 8}, alpha=0.7)


def _finite_difference_check(flow, seed=1):
    gen = torch.Generator().manual_seed(seed)
    w = flow.w0 + 0.1 * torch.randn(flow.n_params, generator=gen)
    _, grad, _ = flow.loss_and_grad(w)
    for _ in range(3):
        u = torch.randn(flow.n_params, generator=gen)
        u /= u.norm()
        eps = 1e-5
        lp = flow.loss(flow.outputs(w + eps * u, flow.x_train), "train")
        lm = flow.loss(flow.outputs(w - eps * u, flow.x_train), "train")
        assert float(grad @ u) == pytest.approx((lp - lm) / (2 * eps), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("route", ["objects", "references"])
@pytest.mark.parametrize("task", ["two-class", "ten-class cross-entropy", "ten-class mse", "callable loss"])
def test_gradient_of_a_user_module_matches_finite_differences(route, task):
    outputs, data, loss = {
        "two-class": (1, usercode.parity_digits(30, 8), "softhinge"),
        "ten-class cross-entropy": (10, usercode.digits(30, 8), "cross-entropy"),
        "ten-class mse": (10, usercode.digits(30, 8), "mse"),
        "callable loss": (1, usercode.parity_digits(30, 8), usercode.log_cosh),
    }[task]
    if route == "objects":
        flow = gflow.build(RunConfig(alpha=0.7), model=usercode.mlp(width=12, outputs=outputs), data=data, loss=loss)
    else:
        cfg = USER.replace(model_args={"width": 12, "outputs": outputs},
                           data="tests.gflow.usercode:" + ("digits" if outputs > 1 else "parity_digits"),
                           loss=loss if isinstance(loss, str) else "tests.gflow.usercode:log_cosh")
        flow = gflow.build(cfg)
    assert flow.outputs_k == outputs and flow.f0_train.shape == ((30,) if outputs == 1 else (30, outputs))
    _finite_difference_check(flow)


def test_a_module_is_copied_and_run_in_eval_mode():
    net = usercode.WithBatchNormAndDropout(64).float().train()
    flow = gflow.build(RunConfig(), model=net, data=usercode.parity_digits(30, 8))
    assert net.training and next(net.parameters()).dtype == torch.float32  # the caller's object is untouched
    assert not flow.model.module.training and flow.w0.dtype == torch.float64
    assert torch.equal(flow.model(flow.w0, flow.x_train), flow.model(flow.w0, flow.x_train))  # no dropout
    described = flow.sources["model"]
    assert described["eval_mode_layers"] == ["net.1", "net.2"]
    assert ["net.1.running_mean", [8]] in described["buffers"]
    assert described["class"].endswith("usercode.WithBatchNormAndDropout")


def test_frozen_parameters_are_constants_and_not_part_of_the_state():
    net = usercode.mlp(width=12)
    net.net[0].weight.requires_grad_(False)
    flow = gflow.build(RunConfig(), model=net, data=usercode.parity_digits(30, 8))
    assert flow.n_params == sum(p.numel() for p in net.parameters()) - net.net[0].weight.numel()
    assert "net.0.weight" not in flow.model.layers and flow.sources["model"]["frozen"] == ["net.0.weight"]
    _finite_difference_check(flow)


def test_integer_labels_become_plus_minus_one_for_one_output_and_classes_for_k():
    x, c, xt, ct = usercode.digits(30, 8)
    two = gflow.build(RunConfig(), model=usercode.mlp(width=8), data=(x, np.where(c % 2, 1, -1), xt, np.where(ct % 2, 1, -1)))
    assert two.y_train.dtype == torch.float64 and set(two.y_train.tolist()) == {-1.0, 1.0}
    ten = gflow.build(RunConfig(loss="mse"), model=usercode.mlp(width=8, outputs=10), data=(x, c.astype(float), xt, ct))
    assert ten.y_train.dtype == torch.int64 and ten.y_train.max() <= 9


def test_the_test_split_is_optional():
    x, y, _, _ = usercode.parity_digits(30, 8)
    flow = gflow.build(RunConfig(), model=usercode.mlp(width=8), data=(x, y))
    assert flow.x_test.shape == (0, 64) and flow.f0_test.shape == (0,) and np.isnan(flow.loss(flow.f0_test, "test"))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"model": usercode.not_a_module()}, "model = 'builtins.int': must give a torch.nn.Module .got a int."),
        ({"model": usercode.three_outputs_per_pair()}, "outputs of shape \\(n,\\) or \\(n, k\\); .* gave shape \\(30, 3, 2\\)"),
        ({"model": usercode.mlp(d=10)}, "cannot be applied to the inputs of shape \\(30, 64\\)"),
        ({"model": usercode.mlp(outputs=3), "loss": "cross-entropy"}, "integer labels 0..2 .* values \\{-1, 1\\}"),
        ({"model": usercode.mlp(outputs=3), "loss": "softhinge"}, "two-class loss for one output .* 3 outputs"),
        ({"loss": lambda a, y: (a - y).sum()}, "must return one loss per sample, shape \\(2,\\), got \\(\\)"),
        ({"loss": 3}, "must be a loss name or a callable"),
        ({"data": (np.zeros((5, 64)), np.ones(4))}, "x_train has 5 samples but y_train has 4 labels"),
        ({"data": (np.zeros((5, 64)), np.ones(5), np.zeros((2, 63)), np.ones(2))}, "test samples of shape \\(63,\\)"),
        ({"data": (np.zeros((5, 64)), np.ones(5), np.zeros((2, 64)))}, "must return \\(x_train, y_train, x_test, y_test\\)"),
        ({"data": (np.full((5, 64), np.nan), np.ones(5))}, "x_train holds NaN"),
        ({"data": (np.array([["a"] * 64] * 5), np.ones(5))}, "x_train must be numbers"),
    ],
)
def test_user_objects_that_do_not_fit_are_one_clear_error(kwargs, message):
    args = {"model": usercode.mlp(width=8), "data": usercode.parity_digits(30, 8), **kwargs}
    with pytest.raises(GflowError, match=message) as info:
        gflow.build(RunConfig(), **args)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"model": "tests.gflow.nowhere:f"}, "model = 'tests.gflow.nowhere:f': cannot import module 'tests.gflow.nowhere'"),
        ({"model": "tests.gflow.usercode:absent"}, "has no attribute 'absent'"),
        ({"model": "tests.gflow.usercode:NOT_CALLABLE"}, "'NOT_CALLABLE' is a int, not a function"),
        ({"model": "tests.gflow.usercode:not_a_module"}, "not_a_module': must give a torch.nn.Module .the factory returned a int."),
        ({"data": "tests.gflow.usercode:raises"}, "raised ValueError: this loader is broken"),
        ({"data": "tests.gflow.usercode:wrong_arity"}, "got a tuple of length 1"),
        ({"model": "tests.gflow.usercode:mlp", "model_args": {"colour": 1}}, "raised TypeError"),
        ({"loss": "tests.gflow.usercode:nope"}, "has no attribute 'nope'"),
    ],
)
def test_bad_references_are_one_clear_error_naming_the_field(fields, message):
    with pytest.raises(GflowError, match=message) as info:
        gflow.build(RunConfig(**fields))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"model": "pkg.mod"}, "must be an importable reference 'package.module:function'"),
        ({"model": "x:y", "width": 50}, "width = 50: sets the built-in network, which model = 'x:y' replaces"),
        ({"data": "x:y", "ptr": 50}, "ptr = 50: sets the built-in data"),
        ({"model_args": {"width": 3}}, "give model = 'package.module:function' too"),
        ({"model": "x:y", "model_args": {"f": object()}}, "values must be numbers"),
    ],
)
def test_reference_fields_are_validated_in_the_config(fields, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**fields)


def test_the_factory_is_called_after_seeding_torch_so_seed_varies_the_initialisation():
    cfg = USER
    a, b = gflow.build(cfg), gflow.build(cfg)
    c = gflow.build(cfg.replace(seed=1))
    assert torch.equal(a.w0, b.w0) and not torch.equal(a.w0, c.w0)


def test_a_factory_gives_the_same_initialisation_whatever_default_dtype_the_caller_set():
    a = gflow.build(USER)
    torch.set_default_dtype(torch.float32)  # conftest restores float64
    b = gflow.build(USER)
    assert torch.get_default_dtype() == torch.float32  # restored after the factory call
    assert torch.equal(a.w0, b.w0)


@pytest.mark.parametrize("center", ["zero", "init"])
def test_weight_decay_gradient_matches_finite_differences_of_the_penalised_loss(center):
    lam = 0.03
    flow = gflow.build(RunConfig(weight_decay=lam, weight_decay_center=center, **SMALL))
    gen = torch.Generator().manual_seed(2)
    w = flow.w0 + 0.1 * torch.randn(flow.n_params, generator=gen)
    c = flow.w0 if center == "init" else torch.zeros_like(w)

    def total(p):
        return flow.loss(flow.outputs(p, flow.x_train), "train") + lam / 2 * float((p - c).pow(2).sum())

    loss, grad, _ = flow.loss_and_grad(w)
    assert float(loss) == pytest.approx(total(w), rel=1e-12)
    u = torch.randn(flow.n_params, generator=gen)
    u /= u.norm()
    eps = 1e-5
    assert float(grad @ u) == pytest.approx((total(w + eps * u) - total(w - eps * u)) / (2 * eps), rel=1e-6)


def test_weight_decay_shifts_the_hessian_spectrum_by_lambda():
    from gflow.hessian import top_eigenvalues

    base = gflow.build(RunConfig(**SMALL))
    decayed = gflow.build(RunConfig(weight_decay=0.25, **SMALL))
    top = top_eigenvalues(base, base.w0, k=3, tol=1e-10).values
    shifted = top_eigenvalues(decayed, decayed.w0, k=3, tol=1e-10).values
    assert np.allclose(shifted, top + 0.25, rtol=1e-8)


def test_weight_decay_flow_of_a_linear_model_is_the_closed_form(tmp_path):
    """f(w, x) = x . w with the quadratic loss: dw/dt = -(H w - b) - lambda (w - c) has the
    solution w* + expm(-(H + lambda) t)(w0 - w*)."""
    torch.manual_seed(0)
    x, y = torch.randn(20, 5), torch.randn(20)
    model = torch.nn.Linear(5, 1, bias=False)
    lam, t_end = 0.3, 4.0
    cfg = RunConfig(loss="mse", centered=False, weight_decay=lam, weight_decay_center="zero", t_end=t_end, saves=3,
                    save_t_min=1.0, rtol=1e-10, atol=1e-12)
    traj = gflow.run(cfg, tmp_path / "lin.h5", model=model, data=(x, y), progress=False)
    flow = traj.flow
    w0 = flow.w0
    # L = 1/(2n) |x w - y|^2 (gflow's mse is (a - y)^2 / 2 per sample): H = x^T x / n, b = x^T y / n
    hess = x.T @ x / len(x) + lam * torch.eye(5)
    w_star = torch.linalg.solve(hess, x.T @ y / len(x))
    exact = w_star + torch.linalg.matrix_exp(-hess * t_end) @ (w0 - w_star)
    assert torch.allclose(traj.weights(-1), exact, rtol=1e-7, atol=1e-9)
    # the stored training loss is the penalised objective
    stored = traj.saves["train_loss"].to_numpy()
    w_end = traj.weights(-1)
    objective = 0.5 * float(((x @ w_end - y) ** 2).mean()) + lam / 2 * float(w_end @ w_end)
    assert stored[-1] == pytest.approx(objective, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("fields", [{}, {"chunk": 16, "weight_decay": 0.01}, {"solver": "momentum"}],
                         ids=["plain", "chunked-decay", "momentum"])
def test_compiled_evaluation_equals_the_eager_one_to_rounding(fields):
    cfg = RunConfig(**SMALL, **fields)
    eager, compiled = gflow.build(cfg), gflow.build(cfg.replace(compile=True))
    w = eager.w0 + 0.01 * torch.randn(eager.n_params, generator=torch.Generator().manual_seed(3))
    for a, b in zip(eager.loss_and_grad(w), compiled.loss_and_grad(w)):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-15)
    assert compiled._compiled not in (None, False)


@pytest.mark.slow
def test_a_compiled_run_is_bitwise_itself(tmp_path):
    cfg = RunConfig(**SMALL, t_end=20.0, saves=5, compile=True)
    a = gflow.run(cfg, tmp_path / "a.h5", progress=False)
    b = gflow.run(cfg, tmp_path / "b.h5", progress=False)
    assert np.array_equal(a.read("saves/f_train"), b.read("saves/f_train"))
    assert a.summary()["evals"] == b.summary()["evals"]


def test_a_model_that_does_not_compile_falls_back_to_eager_with_one_note(uncompilable, capsys):
    cfg = RunConfig(**SMALL)
    eager, compiled = gflow.build(cfg), gflow.build(cfg.replace(compile=True))
    for _ in range(2):
        for a, b in zip(eager.loss_and_grad(eager.w0), compiled.loss_and_grad(eager.w0)):
            assert torch.equal(a, b)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gflow: note: the model did not compile (RuntimeError: Unsupported: a construct the compiler "
                   "cannot trace); evaluating eagerly"]
