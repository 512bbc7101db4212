import pytest
import torch

from gflow.losses import classification_error, get_loss


def test_soft_hinge_tends_to_the_hinge_for_large_beta():
    a = torch.linspace(-3, 3, 61)
    y = torch.ones_like(a)
    hinge = get_loss("hinge")(a, y)
    assert torch.allclose(get_loss("softhinge", beta=1e4)(a, y), hinge, atol=1e-4)
    assert float(get_loss("softhinge", beta=20)(torch.tensor(1.0), torch.tensor(1.0))) == pytest.approx(
        torch.log(torch.tensor(2.0)).item() / 20
    )


def _soft_hinge_derivatives(a: torch.Tensor) -> list[torch.Tensor]:
    """The soft hinge at label 1 and its first three derivatives in a, by autograd (as the
    Hessian-vector products and the central flow take them)."""
    a = a.clone().requires_grad_(True)
    out = [get_loss("softhinge", beta=20)(a, torch.ones_like(a))]
    for _ in range(3):
        out.append(torch.autograd.grad(out[-1].sum(), a, create_graph=True)[0])
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_hinge_derivatives_up_to_the_third_are_finite_at_any_margin(dtype):
    # margins from 0 to far past where e^-x overflows (x = 20 (1 - a) < -88.7 in float32, -709.8 in float64)
    a = torch.cat([torch.linspace(0, 10, 1001), torch.linspace(17, 40, 2301), torch.tensor([100.0, 1e4])]).to(dtype)
    for derivative in _soft_hinge_derivatives(a):
        assert bool(torch.isfinite(derivative).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_hinge_above_its_floor_is_logaddexp_bit_for_bit(dtype):
    a = torch.linspace(-3, 3, 6001, dtype=dtype)  # x = 20 (1 - a) from 80 down to -40
    value, slope, curvature, _ = _soft_hinge_derivatives(a)
    b = a.clone().requires_grad_(True)
    x = 20 * (1 - b)
    plain = torch.logaddexp(torch.zeros_like(x), x) / 20
    plain_slope = torch.autograd.grad(plain.sum(), b, create_graph=True)[0]
    plain_curvature = torch.autograd.grad(plain_slope.sum(), b)[0]
    assert torch.equal(value, plain) and torch.equal(slope, plain_slope) and torch.equal(curvature, plain_curvature)


@pytest.mark.parametrize(
    "name,a,y,expected",
    [("hinge", 0.25, 1.0, 0.75), ("hinge", 2.0, 1.0, 0.0), ("qhinge", -1.0, 1.0, 2.0), ("mse", 0.5, -1.0, 1.125)],
)
def test_losses_match_their_formulas(name, a, y, expected):
    assert float(get_loss(name)(torch.tensor(a), torch.tensor(y))) == pytest.approx(expected)


def test_classification_error_counts_wrong_signs_and_ties():
    assert classification_error(torch.tensor([1.0, -2.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, -1.0])) == 0.75
