"""A progress bar for long integrations: time reached on a log scale, loss, steps."""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from solvers import Observer, StepRecord


class ProgressBar(Observer):
    """tqdm bar whose position is log(t / t_min) / log(t_end / t_min), since training time
    spans decades. Quiet when stderr is not a terminal (tqdm's ``disable=None``)."""

    def __init__(self, t_end: float, t_min: float, enabled: bool | None = None) -> None:
        self.t_min = min(t_min, t_end)
        self.span = math.log(t_end / self.t_min) if t_end > self.t_min else 1.0
        self.bar = tqdm(total=1000, disable=None if enabled is None else not enabled, unit="", leave=True,
                        bar_format="{l_bar}{bar}| {postfix} [{elapsed}]")
        self.bar.set_description("log t")

    def on_step(self, record: StepRecord) -> None:
        if self.bar.disable:
            return
        t = record.ev.t
        position = 0 if t <= self.t_min else int(1000 * min(1.0, math.log(t / self.t_min) / self.span))
        if position != self.bar.n or record.steps % 50 == 0:
            self.bar.n = position
            self.bar.set_postfix_str(
                f"t={t:.3g} loss={float(record.ev.aux.get('loss', float('nan'))):.3e} steps={record.steps} evals={record.evals}",
                refresh=False,
            )
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
