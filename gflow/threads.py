"""How many torch threads a run uses (config ``threads``).

Measured on 2 cores (benchmarks/threads.py, one gradient evaluation of the default run, FC
h = 100 on 1000 digits, and of h = 1000): on an idle machine 2 threads take 0.79x and 0.54x
the time of 1; with both cores busy with other work they take 1.75x and 1.34x (threads
oversubscribe the cores and wait for each other: a ResNet under load took 14x). So a run
uses the cores nobody else is using: ``OMP_NUM_THREADS`` when set (a cluster job's share,
a sweep worker's), else the cores left free by other processes' load, at least one. That
load is the lower of two estimates: the 1-minute load average less this process's own part
of it (:class:`OwnLoad`), and what other processes kept busy on this process's own CPUs
since the last reading (:class:`RecentBusy`). The load average remembers a process that
has ended for a minute, the second does not; the second sees a moment, the load average a
minute: a process busy in both is busy.
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


def _cpus() -> set[int]:
    """The CPUs this process may run on."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


def _busy_seconds(cpus: set[int]) -> float | None:
    """CPU seconds spent busy (anything but idle and waiting for I/O) on ``cpus`` since boot,
    from Linux's /proc/stat; None where it cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        busy = 0
        for line in lines:
            name, *ticks = line.split()
            if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
                user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in ticks[:8])
                busy += user + nice + system + irq + softirq + steal
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


class RecentBusy:
    """The cores of this process's CPUs that other processes kept busy since the last
    reading (the first: when this module was imported), as an average over that interval:

        others = (B(t) - B(t0) - (C(t) - C(t0))) / (t - t0),

    B the busy CPU seconds of /proc/stat summed over the CPUs of this process's affinity,
    C this process's CPU time. It forgets a process that has ended, which the load average
    remembers for a minute: a loop of ``gflow run`` commands on 2 idle cores gave every run
    after the first one thread (benchmarks/run_loop.py, h = 300, t_end = 100: 7.0-7.2 s a
    run; on two, 4.0-4.3 s). And it counts only the CPUs this process may use, where the load
    average counts a whole node's. None where /proc/stat is not readable, or over an interval
    shorter than ``MIN_INTERVAL`` (its ticks are 10 ms; the interval then runs on). A reading
    older than ``MAX_INTERVAL`` is not used: an average over it would dilute a process
    that started since (a notebook's first run an hour after importing gflow), so the
    interval is sampled afresh, ``MIN_INTERVAL`` long."""

    MIN_INTERVAL = 0.2
    MAX_INTERVAL = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = self._reading()

    @staticmethod
    def _reading() -> tuple[float, float, float] | None:
        busy = _busy_seconds(_cpus())
        return None if busy is None else (time.monotonic(), busy, time.process_time())

    def __call__(self) -> float | None:
        with self._lock:
            now, last = self._reading(), self._last
            if now is None or last is None:
                self._last = now
                return None
            if now[0] - last[0] > self.MAX_INTERVAL:
                time.sleep(self.MIN_INTERVAL)  # at least that long: no check of the interval after
                last, now = now, self._reading()
                if now is None:
                    self._last = None
                    return None
            elif now[0] - last[0] < self.MIN_INTERVAL:
                return None
            elapsed = now[0] - last[0]
            self._last = now
            return max(0.0, (now[1] - last[1] - (now[2] - last[2])) / elapsed)


recent_busy = RecentBusy()


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else the cores this process may
    use less the load that other processes make, rounded, at least 1: the 1-minute load
    average less :data:`own_load`, or :data:`recent_busy` where that is lower."""
    given = os.environ.get(ENV, "")
    if given.isdigit() and int(given) >= 1:
        return int(given)
    others = os.getloadavg()[0] - own_load() if hasattr(os, "getloadavg") else 0.0
    recent = recent_busy()
    if recent is not None:
        others = min(others, recent)
    return max(1, len(_cpus()) - round(max(0.0, others)))


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
