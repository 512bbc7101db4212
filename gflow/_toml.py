"""Reading TOML input files: tomllib (Python >= 3.11) or its backport tomli on 3.10."""

import sys
from pathlib import Path
from typing import Any

from .errors import GflowError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on 3.10
    import tomli as tomllib


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The tables of a TOML file; a missing, unreadable or invalid file is one GflowError
    naming ``what`` it should have been (e.g. "config", "sweep")."""
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise GflowError(f"cannot read {what} {path}: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise GflowError(f"{what} {path} is not valid TOML: {e}") from None
