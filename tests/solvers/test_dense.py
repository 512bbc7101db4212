import math

import pytest
import torch

from solvers import hermite


def test_hermite_is_exact_for_cubics():
    def y(t):
        return torch.tensor([2 * t**3 - t**2 + 0.5 * t - 3.0])

    def dy(t):
        return torch.tensor([6 * t**2 - 2 * t + 0.5])

    for t in (0.3, 0.9, 1.6):
        assert float(hermite(t, 0.2, y(0.2), dy(0.2), 1.7, y(1.7), dy(1.7))) == pytest.approx(float(y(t)), rel=1e-13)


def test_hermite_error_is_fourth_order_in_the_spacing():
    def err(h):
        t0, t1 = 1.0, 1.0 + h
        y0, y1 = torch.tensor([math.exp(-t0)]), torch.tensor([math.exp(-t1)])
        mid = 0.5 * (t0 + t1)
        return abs(float(hermite(mid, t0, y0, -y0, t1, y1, -y1)) - math.exp(-mid))

    errors = [err(h) for h in (0.1, 0.05, 0.025)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(abs(p - 4.0) < 0.1 for p in orders), orders
    assert errors[0] <= 0.1**4 * math.exp(-1.0) / 384  # the textbook bound at the midpoint


def test_hermite_rejects_an_empty_interval():
    with pytest.raises(ValueError, match="empty"):
        hermite(1.0, 1.0, torch.zeros(1), torch.zeros(1), 1.0, torch.zeros(1), torch.zeros(1))
