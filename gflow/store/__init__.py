"""Trajectory files: the format (layout, versions, upgrades), the streaming writer, and the
reader (pure I/O). Analysis on top of a file, which needs the model, is :mod:`gflow.trajectory`."""

from .format import FORMAT, FORMAT_VERSION, READ_VERSIONS, REQUIRED
from .reader import TrajectoryFile


__all__ = ["FORMAT", "FORMAT_VERSION", "READ_VERSIONS", "REQUIRED", "RunLock", "TrajectoryFile", "TrajectoryWriter"]


def __getattr__(name: str):
    # The writer (torch, the Hessian, the kernels) is imported on first use: reading a file
    # (`gflow show`, the catalog) does not load torch.
    if name in ("RunLock", "TrajectoryWriter"):
        from . import writer

        return getattr(writer, name)
    raise AttributeError(f"module 'gflow.store' has no attribute {name!r}")
