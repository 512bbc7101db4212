"""How many torch threads a run uses (config ``threads``).

Measured on 2 cores (benchmarks/threads.py, one gradient evaluation of the default run, FC
h = 100 on 1000 digits, and of h = 1000): on an idle machine 2 threads take 0.79x and 0.54x
the time of 1; with both cores busy with other work they take 1.75x and 1.34x (threads
oversubscribe the cores and wait for each other: a ResNet under load took 14x). So a run
uses the cores nobody else is using: ``OMP_NUM_THREADS`` when set (a cluster job's share,
a sweep worker's), else the cores left free by the 1-minute load average less this
process's own part of it (:class:`OwnLoad`), at least one.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator

ENV = "OMP_NUM_THREADS"

LOAD_WINDOW = 60.0
"""Seconds: the time constant of the 1-minute load average (an exponentially damped mean)."""


class OwnLoad:
    """This process's part of the 1-minute load average: its CPU time (every thread) per
    second as an exponentially damped mean with the load average's time constant, the rate
    between two readings taken as constant:

        L(t + dt) = r + (L(t) - r) exp(-dt / 60),   r = (CPU time spent in dt) / dt,

    from 0 when this module is imported. Without it a process's own work counts as another's
    for a minute after: a Python loop of runs on 2 idle cores gave every run after the first
    one thread (the load average read 0.5-0.7, which this process had put there): the
    default run at h = 300 and t_end = 100 took 7.0-7.6 s each, against 3.8-4.1 s on two."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._t, self._cpu, self._mean = time.monotonic(), time.process_time(), 0.0

    def __call__(self) -> float:
        with self._lock:
            t, cpu = time.monotonic(), time.process_time()
            if t > self._t:
                rate = (cpu - self._cpu) / (t - self._t)
                self._mean = rate + (self._mean - rate) * math.exp(-(t - self._t) / LOAD_WINDOW)
                self._t, self._cpu = t, cpu
            return self._mean


own_load = OwnLoad()


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else the cores this process may
    use less the load that other processes make (the 1-minute load average less
    :data:`own_load`, rounded), at least 1."""
    given = os.environ.get(ENV, "")
    if given.isdigit() and int(given) >= 1:
        return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    others = os.getloadavg()[0] - own_load() if hasattr(os, "getloadavg") else 0.0
    return max(1, cores - round(max(0.0, others)))


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` (None: :func:`default_threads`) inside,
    restored after; yields the number used."""
    import torch

    previous = torch.get_num_threads()
    used = threads or default_threads()
    torch.set_num_threads(used)
    try:
        yield used
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def threads_env(threads: int) -> Iterator[None]:
    """``OMP_NUM_THREADS`` set to ``threads`` inside (what every run started there uses when
    its config leaves ``threads`` unset), restored after."""
    previous = os.environ.get(ENV)
    os.environ[ENV] = str(threads)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = previous
