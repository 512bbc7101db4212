"""What a run of gflow's own data and network will need, estimated from its config before
anything is allocated, and refused when it cannot fit.

    data     (ptr + pte) x d input values, d the input dimension after downsampling / PCA
    network  N parameters: FC  d h + (L - 1) h^2 + h k;  CNN  9 (c h + (L - 1) h^2) + h k
    memory   data + N x WORKING_VECTORS (the state, its gradient, a method's Krylov basis and
             stages) + ptr x h x L x 4 (activations of a forward and backward pass)

in the run's dtype, against the memory available (MemAvailable on Linux). A user's own
model or data is sized by the user's code, which gflow does not run to find out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import threading
import time

from solvers.observers import Observer, StepRecord

from .config import RunConfig
from .errors import ConfigError

WORKING_VECTORS = 40
# Input dimension and channels of the built-in data sets (images before downsampling).
_INPUTS = {"digits": (64, 1), "fashion-mnist": (784, 1), "mnist": (784, 1)}


def available_memory() -> int:
    """Bytes of memory available to a new allocation (MemAvailable; all of it elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimate(cfg: RunConfig, data: bool = True, network: bool = True) -> dict[str, int]:
    """Bytes of the built-in data, parameters of the built-in network and bytes of memory
    the run needs (module docstring); 0 for what the user's code or objects provide (a
    reference in ``cfg``, or ``data`` / ``network`` false)."""
    item = 4 if cfg.dtype == "float32" else 8
    d, channels = _INPUTS.get(cfg.dataset, (cfg.dim, 1))
    if cfg.dataset != "teacher" and cfg.downsample > 1:
        d //= cfg.downsample**2
    d = cfg.pca or d
    points = cfg.ptr + cfg.pte
    size = points * d * item if data and cfg.data is None else 0
    if not network or cfg.model is not None:
        return {"data": size, "parameters": 0, "memory": size}
    k = len(cfg.classes or range(10)) if cfg.labels == "classes" else 1
    h, depth = cfg.width, cfg.depth
    if cfg.arch == "cnn":
        parameters = 9 * (channels * h + (depth - 1) * h * h) + h * k
    else:
        parameters = d * h + (depth - 1) * h * h + h * k
    activations = cfg.ptr * h * depth * 4 * item
    return {"data": size, "parameters": parameters, "memory": size + parameters * WORKING_VECTORS * item + activations}


def check_fits(cfg: RunConfig, data: bool = True, network: bool = True) -> None:
    """One ConfigError naming the field and the estimate when the run cannot fit in memory
    (``data`` / ``network`` false: the caller provides them as objects)."""
    need = estimate(cfg, data, network)
    free = available_memory()
    if need["memory"] <= free:
        return
    if need["parameters"] * WORKING_VECTORS * (4 if cfg.dtype == "float32" else 8) > need["data"]:
        field, value = ("width", cfg.width)
        what = f"a network of about {need['parameters']:.3g} parameters"
    else:
        field, value = ("ptr", cfg.ptr)
        what = f"{cfg.ptr + cfg.pte:,} points of data ({need['data'] / 2**30:.3g} GiB)"
    raise ConfigError(field, value, f"{what}: the run needs about {need['memory'] / 2**30:.3g} GiB, more than the "
                      f"{free / 2**30:.3g} GiB of memory available")


@functools.cache
def _malloc_trim() -> ctypes._CFuncPtr | None:
    """glibc's malloc_trim, or None where the C library is not glibc."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def resident_bytes() -> int | None:
    """The process's resident memory now (Linux: /proc/self/statm), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class ReleaseFreedMemory(Observer):
    """Hand freed memory back to the system (glibc's ``malloc_trim(0)``) after an accepted
    step that left the process's resident memory more than ``slack`` bytes above where the
    last release left it, at most as often as keeps the releases to ``budget`` of the run's
    time. glibc keeps freed blocks for reuse, and the state-sized vectors a step allocates
    and frees in varying order fragment its heap, so without this a run's resident memory
    creeps up over its steps: measured on a 1M-parameter MLP
    (benchmarks/overhead_user_mlp_1m.toml, at commit 26a3534), peak 0.93-0.95 GB without
    releases, 0.78 GB releasing after every step, 0.81 GB as here, against 0.46 GB for raw
    forward and backward passes alone. The slack hardly matters: 16, 32 and 64 MiB gave
    the same peak (0.75-0.77 GB, at e045efa), which is reached within a step. With torch's
    blocks page-aligned (gflow/allocator.py) the releases still matter: 659-665 MB against
    741-820 MB without them (two pairs, same wall time).

    A release is not free: the call walks the heap, and the next evaluation faults the
    pages it gave back in again (4.5 ms on a 7.4 ms evaluation at 26.5k parameters). Where
    a step's working set itself exceeds the slack (the 1M MLP: every step; an ensemble's
    members, whose vectorised evaluations run in turn on their threads' own heaps: every
    round), releasing after every step cost 3-7% of the 1M run's time and made an ensemble of
    4 at h = 100 take 1.35x as long. So after a release that took d seconds and gave back b
    bytes, the next waits (d + b / ``REFAULT``) / ``budget`` seconds: measured, 15 releases
    in the 1M run's 37 steps (1-3% of its time) and 3 in the ensemble's 170 member-steps
    (10.7 s, against 13.7-14.9 s releasing at every step and 10.2 s never). One baseline and one clock for
    the process (resident memory is the process's): an ensemble's members, each with its
    own observer, release once for the growth they share."""

    REFAULT = 2e9  # bytes per second at which pages given back fault in again (~2 us per 4 KiB page)
    _lock = threading.Lock()
    _after: int | None = None  # where the last release, by any observer, left resident memory
    _next = 0.0  # time.monotonic() before which no release is made

    def __init__(self, slack: int = 64 * 2**20, budget: float = 0.05) -> None:
        self.slack, self.budget = slack, budget
        with self._lock:
            ReleaseFreedMemory._after, ReleaseFreedMemory._next = resident_bytes(), 0.0

    def on_step(self, record: StepRecord) -> None:
        trim, now = _malloc_trim(), resident_bytes()
        if trim is None or now is None:
            return
        with self._lock:
            after = ReleaseFreedMemory._after
            if after is None or now - after <= self.slack or time.monotonic() < ReleaseFreedMemory._next:
                return
            start = time.monotonic()
            trim(0)
            took = time.monotonic() - start
            ReleaseFreedMemory._after = released = resident_bytes()
            given_back = max(now - (released or now), 0)
            ReleaseFreedMemory._next = time.monotonic() + (took + given_back / self.REFAULT) / self.budget
