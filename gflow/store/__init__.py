"""Trajectory files: the format (layout, versions, upgrades), the streaming writer, and the
reader (pure I/O). Analysis on top of a file, which needs the model, is :mod:`gflow.trajectory`."""

from .format import FORMAT, FORMAT_VERSION, READ_VERSIONS, REQUIRED
from .reader import TrajectoryFile
from .writer import RunLock, TrajectoryWriter

__all__ = ["FORMAT", "FORMAT_VERSION", "READ_VERSIONS", "REQUIRED", "RunLock", "TrajectoryFile", "TrajectoryWriter"]
