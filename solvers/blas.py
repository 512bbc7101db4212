"""NumPy's and SciPy's BLAS held to one thread while an integration runs.

A method's own dense linear algebra is on small matrices (the Krylov space's Hessenberg
matrix and its exponential, of order ~20; the controllers' arithmetic). One thread does it
in microseconds, while OpenBLAS's worker threads keep spinning after each call and take
the cores from the next evaluation of the problem, which runs on torch's own threads.
Measured on the default digits run (2 cores): with SciPy's expm for the phi functions the
run took 1.28x its time inside evaluations with BLAS unthrottled, 1.18x with one BLAS
thread (torch's expm, which avoids BLAS: 1.25x).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_lock = threading.Lock()
_holders = 0
_limiter: Any = None


@functools.cache
def _controller() -> Any:
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS, so that the controller finds it)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # scanning the loaded libraries takes ~1 ms: once


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Inside, NumPy's and SciPy's BLAS use one thread (torch's threads are not touched).
    Concurrent holders (an ensemble's members, each integrating in its own thread) share
    the limit; the previous limits come back when the last one leaves."""
    global _holders, _limiter
    with _lock:
        if _holders == 0:
            _take_control()
            _limiter = _controller().limit(limits=1, user_api="blas")
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                _take_control()
                _limiter.restore_original_limits()
                _limiter = None


def _take_control() -> None:
    """Let this thread set OpenBLAS's process-wide limit: threadpoolctl (>= 3.6) lets only
    the thread that set it first change it again, while here the last holder to leave,
    in whichever thread, restores it (our lock orders the changes)."""
    import threadpoolctl

    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)
