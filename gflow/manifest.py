"""The sweep manifest: what a sweep planned and what became of each run, kept beside the runs.

A run's file says how the run ended, but a run that failed before its file existed (a
factory that raised, a config its worker refused) or whose process was killed before it
wrote anything leaves no file. The manifest ``DIR/gflow-sweep.json`` keeps one entry per
run of every sweep into ``DIR``::

    {"format": "gflow-sweep-manifest", "format_version": 1,
     "runs": {NAME: {"state": STATE, "reason": "...", "config": {RunConfig fields that differ
                     from the defaults}, "updated": "ISO 8601 time", "pid": 1234}}}

with STATE one of ``planned`` (in the grid, not started), ``running`` (a worker took it),
``finished``, ``stopped``, ``failed`` (as the run's file says, or the run never got one)
and ``lost`` (its worker process died during the run: killed, out of memory). The catalog
(``gflow query``) lists the entries that have no file, so nothing a sweep was asked to do
goes unrecorded.

Workers update their own entry (``running`` when they take a run, its end state after);
the sweep's process writes ``planned`` and ``lost``. Each update takes an exclusive flock on
the directory itself, writes the whole manifest to a fresh hidden file created exclusively
and renames it over the old one: a reader never sees half a manifest. Reading is bounded
(MAX_BYTES) and validated: a run directory is input from whoever made it, and a damaged
manifest is one reason, never a crash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import GflowError

NAME = "gflow-sweep.json"
FORMAT = "gflow-sweep-manifest"
STATES = ("planned", "running", "finished", "stopped", "failed", "lost")
MAX_BYTES = 64 * 2**20


class Manifest:
    """The manifest of the sweep directory ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / NAME

    def read(self) -> dict[str, dict[str, Any]]:
        """The entries by run name (empty when there is no manifest); GflowError naming what
        is wrong with a damaged one."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise GflowError(f"{self.path}: cannot read the sweep manifest ({_why(e)})") from None
        with os.fdopen(fd, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise GflowError(f"{self.path}: larger than {MAX_BYTES} bytes; not a sweep manifest")
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise GflowError(f"{self.path}: not valid JSON (damaged sweep manifest)") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("format_version") != 1:
            raise GflowError(f"{self.path}: not a version-1 {FORMAT}")
        runs = data.get("runs")
        if not isinstance(runs, dict):
            raise GflowError(f"{self.path}: 'runs' should be a JSON object")
        for name, entry in runs.items():
            if not (isinstance(entry, dict) and entry.get("state") in STATES
                    and isinstance(entry.get("reason", ""), str) and isinstance(entry.get("config", {}), dict)):
                raise GflowError(f"{self.path}: entry {name[:80]!r} should have a state among {', '.join(STATES)}, a "
                                 "reason and a config")
        return runs

    def update(self, changes: dict[str, dict[str, Any]]) -> None:
        """Merge ``changes`` (run name -> fields) into the manifest, stamped with the time. A
        damaged manifest is replaced (the runs' own files stay the record of what ran)."""
        with self._locked():
            try:
                runs = self.read()
            except GflowError:
                runs = {}
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            for name, fields in changes.items():
                runs[name] = {**runs.get(name, {}), **fields, "updated": now}
            self._write({"format": FORMAT, "format_version": 1, "runs": runs})

    def _write(self, data: dict[str, Any]) -> None:
        tmp = self.directory / f".{NAME}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise GflowError(f"cannot write the sweep manifest {self.path}: {_why(e)}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock on the directory itself: no lock file to leave behind."""
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise GflowError(f"cannot lock the sweep manifest in {self.directory}: {_why(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _why(e: OSError) -> str:
    return "it is a symbolic link" if e.errno == errno.ELOOP else (e.strerror or type(e).__name__)
