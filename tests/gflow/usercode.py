"""A user's own code, as the tests use it: model factories, data loaders and losses that a
config names by reference ("tests.gflow.usercode:mlp"), and some that are wrong on purpose."""

import math

import numpy as np
import torch
from torch import nn

from gflow.models import activation_scale


class MLP(nn.Module):
    """Biases, LayerNorm and tanh: nothing gflow's own networks have."""

    def __init__(self, d: int, width: int, outputs: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, width), nn.LayerNorm(width), nn.Tanh(), nn.Linear(width, outputs))

    def forward(self, x):
        return self.net(x)


def mlp(d: int = 64, width: int = 16, outputs: int = 1) -> nn.Module:
    return MLP(d, width, outputs).double()


class FCLikeGflow(nn.Module):
    """gflow's own FC network (NTK parametrization, normalised softplus, no biases) written
    as a user would write it, initialised from torch's global generator. Its scalars are
    applied to the weights, in gflow's order (W c s, s the softplus' normalisation after
    the first layer): the adaptive step sizes feel rounding, so the same function computed
    in another order gives a trajectory within 1e-10, not 1e-12, of the built-in one."""

    def __init__(self, d: int, width: int, depth: int):
        super().__init__()
        sizes = [d] + [width] * depth + [1]
        self.layers = nn.ParameterList(
            nn.Parameter(torch.randn(n_out, n_in, dtype=torch.float64)) for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )
        self.scale = activation_scale("softplus")

    def forward(self, x):
        z = x
        for i, w in enumerate(self.layers):
            z = z @ (w * ((1 / math.sqrt(w.shape[1])) * (self.scale if i else 1.0))).T
            if i < len(self.layers) - 1:
                z = nn.functional.softplus(z)
        return z  # (n, 1): read as (n,)


def fc_like_gflow(d: int = 64, width: int = 10, depth: int = 2) -> nn.Module:
    return FCLikeGflow(d, width, depth)


class WithBatchNormAndDropout(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


def digits(n_train: int = 60, n_test: int = 20, classes: int = 10, seed: int = 0):
    """scikit-learn's digits as a k-class task (labels 0..k-1), inputs scaled to unit RMS."""
    from sklearn.datasets import load_digits

    x, c = load_digits(return_X_y=True)
    keep = c < classes
    x, c = x[keep], c[keep]
    order = np.random.default_rng(seed).permutation(len(x))[: n_train + n_test]
    x = (x[order] - x[order].mean(0)) / x[order].std()
    return x[:n_train], c[order][:n_train], x[n_train:], c[order][n_train:]


def parity_digits(n_train: int = 40, n_test: int = 10):
    """Digits with +-1 parity labels, given as numpy arrays."""
    x, c, xt, ct = digits(n_train, n_test)
    return x, np.where(c % 2 == 0, 1.0, -1.0), xt, np.where(ct % 2 == 0, 1.0, -1.0)


def log_cosh(a, y):
    """A smooth regression loss: log cosh(a - y) per sample."""
    return torch.log(torch.cosh(a - y))


def not_a_module():
    return 3


def raises(**kwargs):
    raise ValueError("this loader is broken")


def three_outputs_per_pair(d: int = 64):
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(d, 6)

        def forward(self, x):
            return self.lin(x).reshape(len(x), 3, 2)

    return Odd().double()


def wrong_arity():
    return (np.zeros((3, 2)),)


NOT_CALLABLE = 42


def dies_once(flag: str, width: int = 8):
    """An MLP, except the first time in a directory: then its process is killed (SIGKILL),
    as the kernel's out-of-memory killer or a cluster's scheduler would."""
    import os
    import signal
    from pathlib import Path

    if not Path(flag).exists():
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return mlp(width=width)


def nan_for_seed(bad: int, width: int = 8):
    """An MLP whose initialisation is NaN for one seed (the factory is called right after
    torch's generator is seeded with the run's seed)."""
    net = mlp(width=width)
    if torch.initial_seed() == bad:
        with torch.no_grad():
            net.net[0].weight.fill_(float("nan"))
    return net

