import math

import pytest
import torch

from solvers import Evaluation


def _ev(dydt, **aux):
    return Evaluation(0.0, torch.zeros_like(dydt), dydt, aux)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["dydt", "grad", "loss"])
def test_finite_flags_nan_or_inf_in_the_derivative_or_any_auxiliary_value(bad, where):
    values = {"dydt": torch.ones(5), "grad": torch.ones(5), "loss": torch.tensor(2.0)}
    values[where] = values[where].clone()
    values[where].view(-1)[0] = bad
    ev = _ev(values.pop("dydt"), **values)
    assert not ev.finite


def test_finite_flags_opposite_infinities_in_different_tensors():
    assert not _ev(torch.tensor([math.inf, 1.0]), grad=torch.tensor([-math.inf])).finite


def test_finite_accepts_large_but_finite_values_whose_sums_and_norms_overflow():
    huge = torch.full((4,), 1e308, dtype=torch.float64)  # sum 4e308 and norm^2 overflow to inf
    ev = _ev(huge, grad=torch.tensor([1e200, -1e200], dtype=torch.float64), loss=torch.tensor(1e300))
    assert ev.finite


def test_finite_check_leaves_the_auxiliary_norms_cached_for_the_controller():
    g = torch.tensor([3.0, 4.0], dtype=torch.float64)
    ev = _ev(-g, grad=g)
    assert ev.finite
    g.mul_(2)  # a recomputed norm would now read 100
    assert ev.sq_norm("grad") == 25.0


def test_sq_norm_is_the_squared_norm_computed_once_per_evaluation():
    g = torch.tensor([3.0, 4.0], dtype=torch.float64)
    ev = _ev(-g, grad=g, f=torch.ones(2, 2))
    assert ev.sq_norm("grad") == 25.0
    assert ev.sq_norm("f") == 4.0  # any shape
    g.mul_(2)  # the cached value is the evaluation's, not recomputed
    assert ev.sq_norm("grad") == 25.0


def test_value_names_the_derivative_itself_as_dydt_and_any_auxiliary_value_by_its_key():
    g = torch.tensor([3.0, 4.0], dtype=torch.float64)
    ev = _ev(-g, f=torch.ones(3))
    assert ev.value("dydt") is ev.dydt
    assert ev.value("f") is ev.aux["f"]
    assert ev.sq_norm("dydt") == 25.0
    with pytest.raises(KeyError):
        ev.value("grad")
