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


@pytest.mark.parametrize(
    "name,a,y,expected",
    [("hinge", 0.25, 1.0, 0.75), ("hinge", 2.0, 1.0, 0.0), ("qhinge", -1.0, 1.0, 2.0), ("mse", 0.5, -1.0, 1.125)],
)
def test_losses_match_their_formulas(name, a, y, expected):
    assert float(get_loss(name)(torch.tensor(a), torch.tensor(y))) == pytest.approx(expected)


def test_classification_error_counts_wrong_signs_and_ties():
    assert classification_error(torch.tensor([1.0, -2.0, 0.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, -1.0])) == 0.75
