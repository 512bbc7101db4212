"""How many torch threads a run uses (config ``threads``).

Measured on 2 cores (benchmarks/threads.py, one gradient evaluation of the default run, FC
h = 100 on 1000 digits, and of h = 1000): on an idle machine 2 threads take 0.79x and 0.54x
the time of 1; with both cores busy with other work they take 1.75x and 1.34x (threads
oversubscribe the cores and wait for each other: a ResNet under load took 14x). So a run
uses the cores nobody else is using: ``OMP_NUM_THREADS`` when set (a cluster job's share,
a sweep worker's), else the cores left free by the 1-minute load average, at least one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

ENV = "OMP_NUM_THREADS"


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else the cores this process may
    use less the load average (rounded), at least 1."""
    given = os.environ.get(ENV, "")
    if given.isdigit() and int(given) >= 1:
        return int(given)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, cores - round(busy))


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
