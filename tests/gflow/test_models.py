import math

import numpy as np
import pytest
import torch

from gflow.models import FullyConnected, _second_moment, activation, build_model


def _outputs_over_seeds(width, parametrization, seeds=300, d=16):
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(99))
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)
    outs = []
    for seed in range(seeds):
        m = build_model(d, "fc", 2, width, "softplus", parametrization, 1.0, seed, torch.float64, torch.device("cpu"))
        outs.append(m(m.w0, x))
    return torch.stack(outs)


def test_ntk_output_variance_at_init_does_not_depend_on_width():
    variances = [float(_outputs_over_seeds(h, "ntk").var(dim=0).mean()) for h in (32, 128, 512)]
    # Each is the mean of 4 sample variances over 300 seeds: relative error ~ 8%; the
    # normalised activation makes the limit E[phi^2] = 1.
    for v in variances:
        assert v == pytest.approx(1.0, rel=0.3)
    assert max(variances) / min(variances) < 1.4


def test_mean_field_output_variance_decays_like_one_over_width():
    v_small = float(_outputs_over_seeds(32, "mean-field").var(dim=0).mean())
    v_large = float(_outputs_over_seeds(512, "mean-field").var(dim=0).mean())
    assert v_small / v_large == pytest.approx(512 / 32, rel=0.4)


@pytest.mark.parametrize("name", ["softplus", "relu", "swish", "tanh"])
def test_activations_are_normalised_to_unit_second_moment(name):
    assert _second_moment(activation(name)) == pytest.approx(1.0, rel=1e-10)
    z = torch.randn(400_000, generator=torch.Generator().manual_seed(0))
    assert float(activation(name)(z).pow(2).mean()) == pytest.approx(1.0, rel=0.02)


def test_flat_model_matches_the_module_and_its_gradient_is_flat():
    m = build_model(5, "fc", 3, 7, "tanh", "ntk", 1.0, 0, torch.float64, torch.device("cpu"))
    x = torch.randn(6, 5)
    assert torch.allclose(m(m.w0, x), m.module(x))
    w = m.w0.requires_grad_(True)
    (g,) = torch.autograd.grad(m(w, x).sum(), w)
    assert g.shape == (m.n_params,) == (5 * 7 + 7 * 7 * 2 + 7,)


def test_same_seed_gives_the_same_initialisation_and_kappa_scales_the_output():
    a = build_model(5, "fc", 2, 9, "relu", "ntk", 1.0, 3, torch.float64, torch.device("cpu"))
    b = build_model(5, "fc", 2, 9, "relu", "ntk", 2.5, 3, torch.float64, torch.device("cpu"))
    x = torch.randn(3, 5)
    assert torch.equal(a.w0, b.w0)
    assert torch.allclose(b(b.w0, x), 2.5 * a(a.w0, x))


def test_standard_and_ntk_parametrizations_agree_at_initialisation_in_distribution():
    ntk = FullyConnected(8, 64, 2, "softplus", "ntk")
    std = FullyConnected(8, 64, 2, "softplus", "standard")
    assert ntk.multipliers == pytest.approx([1 / math.sqrt(8), 1 / 8, 1 / 8])
    assert std.init_std == pytest.approx(ntk.multipliers) and std.multipliers == [1.0, 1.0, 1.0]
    assert np.isclose(FullyConnected(8, 64, 2, "softplus", "mean-field").multipliers[-1], 1 / 64)


def _cnn(parametrization="ntk", width=5, depth=2, act="tanh"):
    return build_model(36, "cnn", depth, width, act, parametrization, 1.0, 0, torch.float64, torch.device("cpu"))


def test_cnn_equals_an_explicit_convolution_loop():
    m = _cnn()
    x = torch.randn(3, 36, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w1, w2, r = (p.detach() for p in m.module.weights)
    phi = activation("tanh")
    img = torch.nn.functional.pad(x.reshape(3, 1, 6, 6), (1, 1, 1, 1))
    h1 = torch.zeros(3, 5, 6, 6, dtype=torch.float64)
    for c in range(5):
        for i in range(6):
            for j in range(6):
                h1[:, c, i, j] = (img[:, :, i:i + 3, j:j + 3] * w1[c]).sum(dim=(1, 2, 3)) / 3.0  # fan-in 9
    h1 = phi(h1)
    h1p = torch.nn.functional.pad(h1, (1, 1, 1, 1))
    h2 = torch.zeros_like(h1)
    for c in range(5):
        for i in range(6):
            for j in range(6):
                h2[:, c, i, j] = (h1p[:, :, i:i + 3, j:j + 3] * w2[c]).sum(dim=(1, 2, 3)) / math.sqrt(45)
    expected = phi(h2).mean(dim=(2, 3)) @ r[0] / math.sqrt(5)
    assert torch.allclose(m(m.w0, x), expected, rtol=1e-12, atol=1e-14)


def test_cnn_gradient_matches_finite_differences():
    m = _cnn(act="softplus")
    x = torch.randn(4, 36, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w = m.w0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(m(w, x).pow(2).sum(), w)
    rng = np.random.default_rng(0)
    for k in rng.choice(m.n_params, 12, replace=False):
        e = torch.zeros_like(w)
        e[k] = 1e-6
        fd = (m(w.detach() + e, x).pow(2).sum() - m(w.detach() - e, x).pow(2).sum()) / 2e-6
        assert float(g[k]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_cnn_parametrizations_scale_the_readout_like_the_fc_ones():
    x = torch.randn(2, 36, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ntk, mf = _cnn("ntk", width=16), _cnn("mean-field", width=16)
    assert torch.allclose(mf(mf.w0, x), ntk(ntk.w0, x) / math.sqrt(16))


def test_cnn_rejects_inputs_that_are_not_square_images():
    from gflow import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="needs square images"):
        build_model(10, "cnn", 1, 4, "relu", "ntk", 1.0, 0, torch.float64, torch.device("cpu"))
    with pytest.raises(ConfigError, match="arch cnn needs the images themselves"):
        RunConfig(arch="cnn", pca=10)


def _bn_flow(**fields):
    import gflow

    return gflow.build(gflow.RunConfig(model="tests.gflow.layers:batchnorm", ptr=60, pte=10, **fields))


def test_batchnorm_is_calibrated_on_the_training_set_at_w0_by_default():
    """In eval mode a fresh BatchNorm is the identity (mean 0, var 1); calibrated, it
    normalises the training set's features at w0 as a full-batch pass would."""
    flow = _bn_flow()
    net = flow.model.module.net
    with torch.no_grad():
        z, h = net[1](net[0](flow.x_train)), net[0](flow.x_train)
    assert float(z.mean(0).abs().max()) < 1e-12
    bn = net[1]
    expected = 1 / (1 + bn.eps / h.var(0, unbiased=False))
    assert torch.allclose(z.var(0, unbiased=False), expected, rtol=1e-10)
    recorded = flow.sources["model"]["batchnorm"]
    assert recorded["policy"] == "calibrate" and recorded["points"] == 60
    assert np.allclose(recorded["layers"]["net.1"]["mean"], bn.running_mean.numpy())


def test_batchnorm_calibration_in_chunks_equals_one_batch():
    one, chunked = _bn_flow(), _bn_flow(chunk=7)
    assert torch.allclose(one.f0_train, chunked.f0_train, rtol=1e-12, atol=1e-14)


def test_batchnorm_as_is_keeps_the_modules_statistics_and_refuse_is_one_error():
    import gflow

    bn = _bn_flow(batchnorm="as-is").model.module.net[1]
    assert torch.equal(bn.running_mean, torch.zeros(12)) and torch.equal(bn.running_var, torch.ones(12))
    with pytest.raises(gflow.ConfigError, match="batchnorm = 'refuse': the network has BatchNorm layers"):
        _bn_flow(batchnorm="refuse")


def test_a_model_without_batchnorm_records_no_policy():
    import gflow

    flow = gflow.build(gflow.RunConfig(model="tests.gflow.layers:layernorm", ptr=20, pte=5))
    assert "batchnorm" not in flow.sources["model"]
