"""gflow: neural-network training posed as an ODE and integrated accurately.

    cfg = gflow.RunConfig(alpha=1.0, width=100)
    traj = gflow.run(cfg, out="run.h5")        # integrate and store densely in HDF5
    traj = gflow.open("run.h5")                # query: traj.outputs(i), traj.state(i), traj.steps
    flow = gflow.build(cfg)                    # the ODE itself: flow.y0, flow.vector_field(t, y)
"""

from solvers.lazy import make_lazy

from . import allocator as _allocator
from . import threads as _threads  # noqa: F401  (its readings of this process's load start now)

_allocator.align_blocks_to_pages()  # before anything loads torch: torch reads it once (gflow/allocator.py)

# Imported on first use (solvers.lazy): `gflow --help` and `gflow show` never load torch.
_WHERE = {
    **dict.fromkeys(("catalog", "ensemble"), "catalog"),
    **dict.fromkeys(("resume_ensemble", "run_ensemble"), "ensembles"),
    "compare": "compare",
    "RunConfig": "config",
    **dict.fromkeys(("ConfigError", "FileFormatError", "GflowError"), "errors"),
    **dict.fromkeys(("GradientFlow", "build"), "flow"),
    "ntk": "kernels",
    **dict.fromkeys(("resume", "run"), "run"),
    **dict.fromkeys(("Sweep", "run_sweep"), "sweep"),
    "Trajectory": "trajectory",
    "open": "trajectory:open_trajectory",
}

__all__ = sorted(_WHERE)
make_lazy(__name__, _WHERE)
