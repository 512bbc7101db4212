"""Progress of long integrations: a bar on a terminal, a line every so often in a log.

Training time spans decades, so progress is measured on a log scale: the fraction done is
log(t / t_min) / log(t_end / t_min).
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm

from solvers import Observer, StepRecord

LINE_EVERY_S = 60.0  # off a terminal: one progress line at most this often


class ProgressBar(Observer):
    """On a terminal, a tqdm bar (position log t); elsewhere (a batch job's log, a pipe), one
    line at most every ``line_every`` seconds: t, loss, steps, evaluations and an estimate of
    the time left, extrapolated on the log-t scale. ``enabled``: None chooses by whether
    stderr is a terminal; False shows nothing; True always draws the bar."""

    def __init__(self, t_end: float, t_min: float, enabled: bool | None = None, *,
                 line_every: float | None = None, stream: TextIO | None = None) -> None:
        self.t_end = t_end
        self.t_min = min(t_min, t_end)
        self.span = math.log(t_end / self.t_min) if t_end > self.t_min else 1.0
        self.stream = stream or sys.stderr
        terminal = self.stream.isatty()
        self.lines = enabled is None and not terminal
        self.bar = tqdm(total=1000, disable=not (enabled or (enabled is None and terminal)), unit="", leave=True,
                        bar_format="{l_bar}{bar}| {postfix} [{elapsed}]", file=self.stream)
        self.bar.set_description("log t")
        self.line_every = LINE_EVERY_S if line_every is None else line_every
        self.start = self.last_line = time.monotonic()
        self.first_fraction: float | None = None

    def _fraction(self, t: float) -> float:
        return 0.0 if t <= self.t_min else min(1.0, math.log(t / self.t_min) / self.span)

    def _status(self, record: StepRecord) -> str:
        loss = float(record.ev.aux.get("loss", float("nan")))
        return f"t={record.ev.t:.4g} loss={loss:.3e} steps={record.steps} evals={record.evals}"

    def on_step(self, record: StepRecord) -> None:
        if self.lines:
            self._line(record)
        if self.bar.disable:
            return
        position = int(1000 * self._fraction(record.ev.t))
        if position != self.bar.n or record.steps % 50 == 0:
            self.bar.n = position
            self.bar.set_postfix_str(self._status(record), refresh=False)
            self.bar.refresh()

    def _line(self, record: StepRecord) -> None:
        now = time.monotonic()
        fraction = self._fraction(record.ev.t)
        if self.first_fraction is None:  # a resumed run starts part way
            self.first_fraction = fraction
        if now - self.last_line < self.line_every:
            return
        self.last_line = now
        done = fraction - self.first_fraction
        left = (now - self.start) * (1 - fraction) / done if done > 0 else math.nan
        eta = "" if not math.isfinite(left) else f", about {_duration(left)} left"
        print(f"gflow: {self._status(record)} ({100 * fraction:.0f}% of log t{eta})", file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
