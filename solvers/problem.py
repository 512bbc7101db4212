"""What is integrated: a problem maps (t, y) to an evaluation.

An evaluation is the derivative dy/dt plus named auxiliary values the problem wants
reported (a loss, the gradient, network outputs...). For a network every evaluation is a
full-batch forward+backward pass, so evaluations are the unit of cost and are counted by
:class:`CountingProblem`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import torch


@dataclass(frozen=True)
class Evaluation:
    """The result of one evaluation of a problem at (t, y)."""

    t: float
    y: torch.Tensor
    dydt: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    _sq_norms: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    @cached_property
    def finite(self) -> bool:
        """True when the derivative and every auxiliary value are finite.

        One sum per tensor, added as Python floats: a sum is finite iff every term is
        (short of overflowing 1e308), and NaN or inf anywhere makes the total non-finite.
        Computed once per evaluation; summing on the torch side and converting once took
        twice as long (nine small ops instead of one reduction and one read per tensor).
        """
        total = float(self.dydt.sum()) + sum(float(v.sum()) for v in self.aux.values())
        return math.isfinite(total)

    def sq_norm(self, key: str) -> float:
        """||aux[key]||^2, computed once per evaluation: the end of one step is the start of
        the next, and the controller and the trajectory writer both need it."""
        if key not in self._sq_norms:
            v = self.aux[key]
            self._sq_norms[key] = float(v.dot(v)) if v.dim() == 1 else float(v.square().sum())
        return self._sq_norms[key]


class Problem(Protocol):
    """Anything with ``evaluate(t, y) -> Evaluation``."""

    def evaluate(self, t: float, y: torch.Tensor) -> Evaluation: ...


class FunctionProblem:
    """A plain vector field dy/dt = f(t, y), with optional auxiliary values aux(t, y).

    Mostly for tests and for users integrating ordinary ODEs with the same machinery.
    """

    def __init__(
        self,
        f: Callable[[float, torch.Tensor], torch.Tensor],
        aux: Callable[[float, torch.Tensor], dict[str, torch.Tensor]] | None = None,
    ) -> None:
        self._f = f
        self._aux = aux

    def evaluate(self, t: float, y: torch.Tensor) -> Evaluation:
        aux = self._aux(t, y) if self._aux is not None else {}
        return Evaluation(t=t, y=y, dydt=self._f(t, y), aux=aux)


class CountingProblem:
    """Wraps a problem and counts its evaluations (the unit of cost)."""

    def __init__(self, problem: Problem, count: int = 0) -> None:
        self.problem = problem
        self.count = count

    def evaluate(self, t: float, y: torch.Tensor) -> Evaluation:
        self.count += 1
        return self.problem.evaluate(t, y)
