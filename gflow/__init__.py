"""gflow: neural-network training posed as an ODE and integrated accurately.

    cfg = gflow.RunConfig(alpha=1.0, width=100)
    traj = gflow.run(cfg, out="run.h5")        # integrate and store densely in HDF5
    traj = gflow.open("run.h5")                # query: traj.outputs(i), traj.state(i), traj.steps
    flow = gflow.build(cfg)                    # the ODE itself: flow.y0, flow.vector_field(t, y)
"""

import sys
import types

# Imported on first use (PEP 562): `gflow --help` and `gflow show` never load torch.
_WHERE = {
    **dict.fromkeys(("catalog", "ensemble"), "catalog"),
    "compare": "compare",
    "RunConfig": "config",
    **dict.fromkeys(("ConfigError", "FileFormatError", "GflowError"), "errors"),
    **dict.fromkeys(("GradientFlow", "build"), "flow"),
    "ntk": "kernels",
    **dict.fromkeys(("resume", "run"), "run"),
    **dict.fromkeys(("Sweep", "run_sweep"), "sweep"),
    "Trajectory": "trajectory",
}

__all__ = sorted([*_WHERE, "open"])


class _Package(types.ModuleType):
    """The import system binds a submodule to its package's attribute of the same name; where
    a submodule is named for the function it exports (run, catalog, compare), the package's
    attribute stays the function, as an eager ``from .run import run`` left it."""

    def __setattr__(self, name: str, value: object) -> None:
        if not (name in _WHERE and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    import importlib

    if name == "open":
        value = importlib.import_module(".trajectory", __name__).open_trajectory
    elif name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    else:
        raise AttributeError(f"module 'gflow' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
