import pytest
import torch

from gflow.autodiff import FORWARD, JVP, REVERSE, composite_attention, reverse_jvp
from gflow.models import FlatModel, Linearized, prepare
from tests.gflow import layers


def _flat(factory, d=16, seed=0):
    torch.manual_seed(seed)
    return prepare(factory(d), torch.float64, torch.device("cpu"))


def _fd(f, w, u, eps=1e-5):
    return (f(w + eps * u) - f(w - eps * u)) / (2 * eps)


def test_reverse_over_reverse_equals_forward_mode_on_a_smooth_model():
    model = _flat(layers.residual)
    x = torch.randn(7, 16)
    w, u = model.w0, torch.randn(model.n_params)
    f = lambda p: model(p, x)  # noqa: E731
    forward = torch.func.jvp(f, (w,), (u,))[1]
    assert torch.allclose(reverse_jvp(f, w, u)[1], forward, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("family", ["attention", "transformer"])
def test_fused_attention_falls_back_to_reverse_over_reverse_and_matches_finite_differences(family):
    model = _flat(getattr(layers, family))
    x = torch.randn(5, 16)
    w, u = model.w0, torch.randn(model.n_params)
    f = lambda p: model(p, x)  # noqa: E731
    with pytest.raises(NotImplementedError):
        torch.func.jvp(f, (w,), (u,))
    _, ju = model.jvp(f, w, u)
    assert model.jvp.mode == REVERSE
    assert float((ju - _fd(f, w, u)).norm() / ju.norm()) < 1e-8
    v, a = model.jvp.second(f, w, u)
    assert torch.allclose(v, ju, rtol=1e-10, atol=1e-12)
    assert torch.allclose(a, _per_output_curvature(f, w, u), rtol=1e-10, atol=1e-12)


def _per_output_curvature(f, w, u):
    """u^T H_i u for each output i, one Hessian-vector product (double backward) per output."""
    p = w.detach().requires_grad_(True)
    with torch.enable_grad(), composite_attention():
        out = f(p)
        rows = []
        for fi in out:
            (g,) = torch.autograd.grad(fi, p, create_graph=True)
            rows.append(torch.autograd.grad(g @ u, p, retain_graph=True)[0] @ u)
    return torch.stack(rows)


@pytest.mark.parametrize("family", ["layernorm", "residual", "lstm"])
def test_second_directional_derivative_is_exact_where_jvp_of_jvp_is_not(family):
    """torch's forward-over-forward through LayerNorm is off by percents; ours equals the
    per-output u^T H_i u to rounding."""
    model = _flat(getattr(layers, family))
    x = torch.randn(5, 16)
    w, u = model.w0, torch.randn(model.n_params)
    f = lambda p: model(p, x)  # noqa: E731
    _, a = model.jvp.second(f, w, u)
    truth = _per_output_curvature(f, w, u)
    assert float((a - truth).norm() / truth.norm()) < 1e-12
    assert float((a - _fd(lambda p: model.jvp(f, p, u)[1], w, u)).norm() / truth.norm()) < 1e-6


def test_a_model_with_forward_rules_keeps_forward_mode():
    model = _flat(layers.layernorm)
    x = torch.randn(5, 16)
    model.jvp(lambda p: model(p, x), model.w0, torch.randn(model.n_params))
    assert model.jvp.mode == FORWARD and JVP().mode is None


def test_linearized_transformer_gradient_matches_finite_differences():
    """The tangent model's gradient flows through the reverse-over-reverse product."""
    model = _flat(layers.transformer)
    lin = Linearized(model, model.w0)
    x = torch.randn(4, 16)
    w = (model.w0 + 0.01 * torch.randn(model.n_params)).requires_grad_(True)
    (g,) = torch.autograd.grad((lin(w, x) ** 2).sum(), w)
    u = torch.randn(model.n_params)
    fd = _fd(lambda p: (lin(p, x) ** 2).sum().detach(), w.detach(), u, eps=1e-6)
    assert abs(float(g @ u) - float(fd)) < 1e-7 * abs(float(fd))
    assert isinstance(model, FlatModel)
