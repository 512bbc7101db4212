"""gflow: neural-network training posed as an ODE and integrated accurately.

    cfg = gflow.RunConfig(alpha=1.0, width=100)
    traj = gflow.run(cfg, out="run.h5")        # integrate and store densely in HDF5
    traj = gflow.open("run.h5")                # query: traj.outputs(i), traj.state(i), traj.steps
    flow = gflow.build(cfg)                    # the ODE itself: flow.y0, flow.vector_field(t, y)
"""

from .catalog import catalog, ensemble
from .compare import compare
from .config import RunConfig
from .errors import ConfigError, FileFormatError, GflowError
from .flow import GradientFlow, build
from .kernels import ntk
from .run import resume, run
from .sweep import Sweep, run_sweep
from .trajectory import Trajectory
from .trajectory import open_trajectory as open

__all__ = [
    "ConfigError", "FileFormatError", "GflowError", "GradientFlow", "RunConfig", "Sweep", "Trajectory", "build",
    "catalog", "compare", "ensemble", "ntk", "open", "resume", "run", "run_sweep",
]
