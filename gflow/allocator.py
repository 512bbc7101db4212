"""How torch's CPU allocator places a run's blocks: page-aligned, and those of 2 MiB and more
on transparent huge pages where the kernel allows (``THP_MEM_ALLOC_ENABLE=1``, an option of
PyTorch's allocator, c10/core/impl/alloc_cpu.cpp, recommended in its CPU performance-tuning material).

Why gflow asks for it: a run's state-sized vectors (the Krylov basis' rows, a step's stages,
the gradient) are allocated and freed in an order that varies from step to step, and among
glibc's default 64-byte-aligned blocks they fragment its heap; page-aligned, they leave it far
less fragmented. Measured on the 1,076,010-parameter MLP (benchmarks/overhead_user_mlp_1m.toml,
two threads, alternating fresh processes): peak resident memory 655-660 MB against
781-805 MB (at the peak, 227 MB of glibc's heap free against 344 MB), at the same wall time
(21.2-23.1 s against 21.5-23.6 s); no change on the default run (26,500 parameters, no
block of 2 MiB: 321-331 MB either way, wall time within the machine's drift over eleven
pairs) nor at 10,000 Fashion-MNIST points and h = 300 (1,061 MB either way). A process of
raw forward and backward passes peaks at the same 442-453 MB with or without it.

torch reads the variable once, at its first allocation, which its import makes: it can only
be set before torch loads. ``import gflow`` does so when torch is not loaded yet and the
variable is unset; a script that imports torch first, or wants the default allocator, sets
``THP_MEM_ALLOC_ENABLE`` itself (``1`` or ``0``). Child processes (a sweep's workers, Dask's)
inherit it.
"""

import os
import sys

VARIABLE = "THP_MEM_ALLOC_ENABLE"


def align_blocks_to_pages() -> None:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` in this process's environment (and so its children's),
    unless the user set it, and only while torch is not loaded: once it is, its allocator has
    read the variable, and setting it would claim what is not so."""
    if "torch" not in sys.modules:
        os.environ.setdefault(VARIABLE, "1")
