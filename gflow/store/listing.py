"""Which trajectory files a command's paths name: a file names itself, a directory (a
sweep's or an ensemble's) the ``*.h5`` files in it, in the order of their grid values."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import GflowError

_NUMBER = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def natural_key(name: str) -> tuple[tuple[int, float | str], ...]:
    """A sort key that orders the numbers in names by value: alpha=2 before alpha=10 and
    alpha=1e-2 before alpha=0.5 (a sweep's file names are its grid values)."""
    return tuple((0, float(part)) if i % 2 else (1, part) for i, part in enumerate(_NUMBER.split(name)) if part)


def directory_runs(directory: str | Path) -> list[Path]:
    """The trajectory files (``*.h5``) directly in ``directory``, in :func:`natural_key` order."""
    return sorted(Path(directory).glob("*.h5"), key=lambda p: natural_key(p.name))


def run_files(paths: Iterable[str | Path]) -> list[Path]:
    """``paths`` with each directory replaced by :func:`directory_runs` (its files are not
    opened here: a damaged one is the reader's to report). A directory with no runs, or a
    path that is neither a file nor a directory, is one error naming it."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            runs = directory_runs(path)
            if not runs:
                raise GflowError(f"{path}: a directory with no trajectory files (*.h5) in it")
            files += runs
        elif path.exists():
            files.append(path)
        else:
            raise GflowError(f"{path}: no such file or directory")
    return files
