"""Whether a run evaluates its loss and gradient through ``torch.compile``.

torch.compile fuses the elementwise operations of the forward and backward passes (the
activations, their derivatives, the loss), so what it saves per evaluation grows with the
elements those operations produce, n x A for n training points and A elements per point of
one forward pass, while the matrix products cost the same compiled or not. gflow's own
networks leave it less to fuse than they did (their scalars are folded into the weights,
gflow.models: A halved, and the eager evaluation 1.2-1.4x faster at h = 100-300, 1.1x on the
CNN).
Measured on this project's 2-core CPU (float64; FC L = 3 softplus on digits at h = 100-1000
and on 10k Fashion-MNIST points at h = 100 and 300, the built-in CNN; ``python
benchmarks/evaluation.py``, docs/benchmarks/evaluation.md on one thread and
evaluation_2threads on two), compiling saved 0.3-1.8 ns per element per evaluation: 1.03-1.07x
faster on one thread, 1.02-1.07x on two (1.2x at the default run's size, where that is a
millisecond). Compiling costs about 4 s with inductor's cache warm and about 20 s cold, so
it pays back within a run of a few hundred to a thousand evaluations from
``COMPILE_ELEMENTS`` = 1e7 elements per evaluation on (12-14 ms saved per evaluation there):
the paper's 10k Fashion-MNIST points compile from h = 300 (1.8e7), the default digits run
(6e5), digits at h = 1000 (6e6), Fashion-MNIST at h = 100 (6e6) and a 1M-parameter MLP on
500 points (2e6) do not.

``compile = None`` (the default) applies that rule; ``True`` or ``False`` decides it. The
rule reads only the config's network and data (A is counted on the first training points),
so a run and its resume decide alike, and a run stays bitwise itself. The threshold is
calibrated on a CPU; on a GPU, where small networks are bound by kernel launches, compiling
likely pays earlier, unmeasured as yet.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

COMPILE_ELEMENTS = 1e7
"""Forward elements per evaluation (n x A) from which ``compile = None`` compiles."""


class _ElementCount(TorchFunctionMode):
    """Counts the elements of every tensor the torch functions called under it produce (a
    function mode, not a dispatch mode: that would import torch's symbolic machinery, 70 MB
    and a second, into every run)."""

    def __init__(self) -> None:
        super().__init__()
        self.elements = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.elements += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def elements_per_point(forward: Callable[[torch.Tensor], object], x: torch.Tensor) -> float:
    """A: the elements one forward pass produces per input point, counted over every
    operation (views included) on the first 8 and first 4 points of ``x``, differenced so
    that work on the weights alone (a transpose, a scaled copy) cancels out."""
    counts = []
    for points in (x[:4], x[:8]):  # sliced outside the count: the input is not the model's work
        with torch.no_grad(), _ElementCount() as count:
            forward(points)
        counts.append(count.elements)
    return (counts[1] - counts[0]) / 4


def decide(setting: bool | None, forward: Callable[[torch.Tensor], object], x_train: torch.Tensor) -> bool:
    """The run compiles: ``setting`` when given, else whether n x A reaches ``COMPILE_ELEMENTS``
    (False for fewer than 8 training points, or a forward pass that cannot be counted)."""
    if setting is not None:
        return setting
    if len(x_train) < 8:
        return False
    try:
        return len(x_train) * elements_per_point(forward, x_train) >= COMPILE_ELEMENTS
    except Exception:  # a model the counting mode cannot run is left to eager evaluation
        return False
