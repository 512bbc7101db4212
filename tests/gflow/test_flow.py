import pytest
import torch

import gflow
from gflow import RunConfig

SMALL = dict(ptr=40, pte=10, width=12, depth=2)


@pytest.mark.parametrize("loss", ["softhinge", "qhinge", "mse"])
@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("model", [{}, {"arch": "cnn"}, {"linearized": True}], ids=["fc", "cnn", "linearized"])
def test_gradient_matches_central_finite_differences(loss, centered, model):
    flow = gflow.build(RunConfig(loss=loss, centered=centered, alpha=0.7, **SMALL, **model))
    gen = torch.Generator().manual_seed(1)
    w = flow.w0 + 0.1 * torch.randn(flow.n_params, generator=gen)
    _, grad, _ = flow.loss_and_grad(w)
    for _ in range(3):
        u = torch.randn(flow.n_params, generator=gen)
        u /= u.norm()
        eps = 1e-5
        lp = flow.loss(flow.outputs(w + eps * u, flow.x_train), "train")
        lm = flow.loss(flow.outputs(w - eps * u, flow.x_train), "train")
        assert float(grad @ u) == pytest.approx((lp - lm) / (2 * eps), rel=1e-6, abs=1e-12)


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


def test_public_attributes_of_build():
    flow = gflow.build(RunConfig(**SMALL))
    assert flow.x_train.shape == (40, 64) and flow.y_test.shape == (10,)
    assert torch.equal(flow.model(flow.y0, flow.x_test), flow.f0_test)
    assert flow.y0.dtype == torch.float64
