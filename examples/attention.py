"""A tiny attention model on a synthetic sequence task, then its kernel change and t1.

Sequences of T tokens from a vocabulary of V; the label is +1 when token 0 occurs more often
than token 1, else -1 (ties dropped): a counting task one attention head can solve. The
model embeds tokens and positions, applies one softmax self-attention layer, averages over
positions and reads out one number. Inputs are integer tokens: gflow keeps them integers.

After training at a small and a large alpha it measures, from the stored trajectories,
how far the neural tangent kernel moved and when training left the tangent space (t1):
the feature regime (small alpha) moves the kernel early, the lazy regime barely.

    python examples/attention.py [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gflow


class TinyAttention(nn.Module):
    """Token and position embeddings (d), one softmax attention head, mean pooling, readout."""

    def __init__(self, vocab: int, length: int, d: int):
        super().__init__()
        self.tokens = nn.Embedding(vocab, d)
        self.positions = nn.Parameter(torch.randn(length, d) / math.sqrt(d))
        self.query, self.key, self.value = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.readout = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokens(x) + self.positions
        scores = self.query(h) @ self.key(h).transpose(1, 2) / math.sqrt(h.shape[-1])
        attended = torch.softmax(scores, dim=-1) @ self.value(h)
        return self.readout((h + attended).mean(dim=1))


def counting_task(n: int, vocab: int, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, size=(4 * n, length))
    margin = (x == 0).sum(1) - (x == 1).sum(1)
    keep = np.flatnonzero(margin != 0)[:n]
    return x[keep], np.where(margin[keep] > 0, 1.0, -1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", help="directory for the runs (default: a temporary one)")
    args = parser.parse_args()
    n, d, t_end = (40, 8, 20.0) if args.quick else (300, 16, 1000.0)
    vocab, length = 6, 8
    data = (*counting_task(n, vocab, length, seed=0), *counting_task(300, vocab, length, seed=1))
    out = Path(args.out or tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    print(f"{'alpha':>6} {'evals':>6} {'train err':>9} {'test err':>8} {'kernel change':>13} "
          f"{'t1 kernel':>9} {'t1 gap':>8}")
    for alpha in (0.1, 10.0):
        torch.manual_seed(0)
        model = TinyAttention(vocab, length, d)
        cfg = gflow.RunConfig(alpha=alpha, solver="exponential", rtol=1e-3, atol=1e-6, t_end=t_end, saves=30,
                              kernel_n=min(n, 100), kernel_every=3)
        path = out / f"attention-alpha{alpha:g}.h5"
        gflow.run(cfg, path, model=model, data=data, overwrite=True, progress=False)
        traj = gflow.open(path, model=model, data=data)
        s = traj.summary()
        _, change = traj.kernel_change()
        print(f"{alpha:6g} {s['evals']:6d} {s['train_err']:9.3f} {s['test_err']:8.3f} {change[-1]:13.3g} "
              f"{traj.t1('kernel', eps=0.1):9.3g} {traj.t1('linearization', eps=0.1):8.3g}")
    print(f"runs in {out}")


if __name__ == "__main__":
    main()
