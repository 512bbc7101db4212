"""What the entry point reports while it integrates: step and save records.

An observer has ``on_step(record)`` (every accepted step) and ``on_save(record)`` (every
requested save time). A step record carries the evaluation at the new state, so an observer
can read the loss or outputs without evaluating anything again; a save record carries the
state at the save time, exact or interpolated (see :class:`SaveRecord`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .problem import Evaluation


@dataclass(frozen=True)
class StepRecord:
    """One accepted step from t - dt to t = ev.t.

    rejected: tentative steps rejected before this one was accepted; evals: evaluations so
    far (cumulative, those of rejected attempts included); ratios: the controller's ratios of the
    accepted attempt; wall: seconds since the integration started.
    """

    ev: Evaluation
    dt: float
    steps: int
    rejected: int
    evals: int
    wall: float
    ratios: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SaveRecord:
    """The state at the index-th save time t.

    ``y``, ``dydt``: the state and its derivative at t. Exact when a step landed on t
    (``ev`` is then the evaluation there); otherwise from the step's interpolant (``ev`` is
    None: nothing was evaluated at t). ``last``: the evaluation at the end of the latest
    accepted step (at t, or past it when interpolated), ``dt`` the step size the method
    continues with from there (None until it has chosen one): with the counters, all that
    continuing the integration needs. ``closes_step``: no later save comes from the same
    step, so a checkpoint taken now is consistent with the saves written.
    """

    t: float
    y: torch.Tensor
    dydt: torch.Tensor
    ev: Evaluation | None
    last: Evaluation
    index: int
    steps: int
    evals: int
    wall: float
    dt: float | None = None
    closes_step: bool = True


class Observer:
    """Base observer: override what you need."""

    def on_step(self, record: StepRecord) -> None:
        pass

    def on_save(self, record: SaveRecord) -> None:
        pass
