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
class State:
    """A point (t, y): a tentative step's end before it is evaluated (a controller that
    decides from y alone sees only this, see :class:`~solvers.adaptive.Adaptive`)."""

    t: float
    y: torch.Tensor


@dataclass(frozen=True)
class Evaluation(State):
    """The result of one evaluation of a problem at (t, y)."""

    dydt: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    _sq_norms: dict[str, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    @cached_property
    def finite(self) -> bool:
        """True when the derivative and every auxiliary value are finite (every entry).

        One reduction per tensor: a sum of dy/dt and the cached squared norm of each
        auxiliary value (:meth:`sq_norm`), each a Python float. A reduction over finite
        entries is finite unless it overflows, and NaN or inf in any entry makes it
        non-finite; so only a non-finite reduction is checked entry by entry, which keeps
        the answer exact for huge finite values. The norms are the ones the controller and
        the trajectory writer read next, so the check costs them nothing more: per step a
        pass over the derivative and one over the gradient, as a plain sum of each did.
        """
        return _all_finite(self.dydt, float(self.dydt.sum())) and all(
            _all_finite(v, self.sq_norm(k)) for k, v in self.aux.items()
        )

    def value(self, key: str) -> torch.Tensor:
        """``aux[key]``, or dy/dt itself for the key ``"dydt"``: a problem whose auxiliary value
        is dy/dt up to sign need not hold it twice (gradient flow: grad L = -dy/dt, a
        state-sized vector per evaluation), and a reader of a sign-blind quantity (a norm,
        the gradient turn of :class:`~solvers.controllers.GradientRatio`) names ``"dydt"``."""
        return self.dydt if key == "dydt" else self.aux[key]

    def sq_norm(self, key: str) -> float:
        """||value(key)||^2, computed once per evaluation: the end of one step is the start of
        the next, and the controller and the trajectory writer both need it."""
        if key not in self._sq_norms:
            v = self.value(key)
            self._sq_norms[key] = float(v.dot(v)) if v.dim() == 1 else float(v.square().sum())
        return self._sq_norms[key]


def _all_finite(v: torch.Tensor, reduction: float) -> bool:
    """Whether every entry of ``v`` is finite, given a sum or a squared norm of ``v``."""
    return math.isfinite(reduction) or bool(v.isfinite().all())


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
    """Wraps a problem and counts its evaluations (the unit of cost).

    ``count``: the evaluations a method makes to integrate. ``observed``: those made only to
    show observers an accepted state a method never evaluates itself (SUNDIALS' BDF does not
    evaluate its corrected state), counted apart so that a method's cost is its own."""

    def __init__(self, problem: Problem, count: int = 0) -> None:
        self.problem = problem
        self.count = count
        self.observed = 0

    def evaluate(self, t: float, y: torch.Tensor) -> Evaluation:
        self.count += 1
        return self.problem.evaluate(t, y)

    def observe(self, t: float, y: torch.Tensor) -> Evaluation:
        """An evaluation for observers only: counted in ``observed``, not in ``count``."""
        self.observed += 1
        return self.problem.evaluate(t, y)
