"""Reading TOML input files: tomllib (Python >= 3.11) or its backport tomli on 3.10."""

import sys
from pathlib import Path
from typing import Any

from .errors import GflowError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


MAX_BYTES = 2**20  # a config or sweep file; more is not one (/dev/zero, a data file given by mistake)


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The tables of a TOML file; a missing, unreadable, oversized (MAX_BYTES) or invalid file
    is one GflowError naming ``what`` it should have been (e.g. "config", "sweep")."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise GflowError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise GflowError(f"{what} {path} is larger than {MAX_BYTES // 1024} KiB: not a {what} file")
    try:
        return tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GflowError(f"{what} {path} is not valid TOML: {first}") from None
