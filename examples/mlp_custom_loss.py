"""Your own network and your own loss, from Python.

An MLP with biases and LayerNorm (nothing gflow's own networks have), trained by gradient
flow on digits parity with a loss gflow does not ship: l(a, y) = log cosh(1 - y a) for
y a < 1 and 0 beyond, a smooth hinge. The same objects go to gflow.run, and back to
gflow.open for the analysis that needs the network (kernel change, t1).

    python examples/mlp_custom_loss.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import gflow


def smooth_hinge(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample loss on the scaled output a = alpha (f - f0): log cosh of the hinge's slack."""
    slack = torch.relu(1 - y * a)
    return torch.log(torch.cosh(slack))


def mlp(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(64, width), nn.LayerNorm(width), nn.Tanh(), nn.Linear(width, 1))


def deep_mlp(width: int = 1000, classes: int = 10) -> nn.Module:
    """Two tanh hidden layers with biases: 64 -> width -> width -> classes (1,076,010
    parameters at width 1000: the large model of benchmarks/overhead_user_mlp_1m.toml)."""
    return nn.Sequential(nn.Linear(64, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, classes))


def parity_digits(n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    x, c = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))[: n_train + n_test]
    x, y = (x[order] - 8.0) / 8.0, np.where(c[order] % 2 == 0, 1.0, -1.0)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", help="directory for the runs (default: a temporary one)")
    args = parser.parse_args()
    n_train, width, t_end = (60, 16, 50.0) if args.quick else (500, 128, 2000.0)
    data = parity_digits(n_train, 300)
    out = Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'alpha':>6} {'evals':>6} {'train err':>9} {'test err':>8} {'kernel change':>13} {'t1 (gap 0.1)':>12}")
    for alpha in (0.1, 10.0):
        torch.manual_seed(0)
        model = mlp(width)
        cfg = gflow.RunConfig(alpha=alpha, solver="exponential", rtol=1e-3, atol=1e-6, t_end=t_end, saves=30)
        gflow.run(cfg, out / f"mlp-alpha{alpha:g}.h5", model=model, data=data, loss=smooth_hinge,
                  overwrite=True, progress=False)
        traj = gflow.open(out / f"mlp-alpha{alpha:g}.h5", model=model, data=data, loss=smooth_hinge)
        s = traj.summary()
        _, change = traj.kernel_change(n=100)
        print(f"{alpha:6g} {s['evals']:6d} {s['train_err']:9.3f} {s['test_err']:8.3f} {change[-1]:13.3g} "
              f"{traj.t1('linearization', eps=0.1):12.3g}")
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
