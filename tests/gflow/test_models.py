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
