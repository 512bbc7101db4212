"""What the entry point reports while it integrates: step and save records.

An observer has ``on_step(record)`` (every accepted step) and ``on_save(record)`` (every
requested save time, hit exactly). Both receive the evaluation at the new state, so an
observer can read the loss or outputs without evaluating anything again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .problem import Evaluation


@dataclass(frozen=True)
class StepRecord:
    """One accepted step from t - dt to t = ev.t.

    rejected: tentative steps rejected before this one was accepted; evals: evaluations so
    far (cumulative, rejected attempts included); ratios: the controller's ratios of the
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
    """The state at the index-th save, at time ev.t. dt: the step size the method will
    start from there (None until the method has chosen one); with the state and the
    counters it is all that is needed to continue the integration from this save."""

    ev: Evaluation
    index: int
    steps: int
    evals: int
    wall: float
    dt: float | None = None


class Observer:
    """Base observer: override what you need."""

    def on_step(self, record: StepRecord) -> None:
        pass

    def on_save(self, record: SaveRecord) -> None:
        pass
