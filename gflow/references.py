"""Importable references to user code: "package.module:attribute", and the one gate in front of them.

A config names a model factory, a data loader or a loss by where it can be imported from,
so the CLI, sweep workers and ``resume`` can rebuild a run in another process without
pickling anything. References are resolved with importlib, never evaluated. The working
directory is searched too (as ``python -m`` would), so a module beside the config works
from the ``gflow`` command.

This module is the only place in gflow that imports or calls user code. A reference read
from a trajectory file is input from whoever made the file: it is resolved only when the
caller says it trusts that file's code (``trust_code=True``, ``--trust-code``), the way
``trust_remote_code`` works elsewhere. Without that word nothing is imported.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

from .errors import ConfigError, UntrustedCode


def check_trusted(named: list[tuple[str, str, dict[str, Any] | None]], file: str | os.PathLike[str] | None,
                  trust_code: bool) -> None:
    """Raise UntrustedCode naming every reference in ``named`` ((field, reference, keyword
    arguments) triples) when they were read from ``file`` and the caller did not pass
    ``trust_code``; references from the caller's own config (``file`` None) pass."""
    if file is None or trust_code or not named:
        return
    described = " and ".join(f"{field} {reference!r}" + (f" with {field}_args = {json.dumps(kwargs)}" if kwargs else "")
                             for field, reference, kwargs in named)
    raise UntrustedCode(f"{file}: the run's {described} {'is code' if len(named) == 1 else 'are code'} named by the "
                        "file; gflow runs code a file names only on your word: if you trust whoever made the file, "
                        "pass trust_code=True (gflow.open(path, trust_code=True)) or --trust-code")


def resolve(field: str, reference: str, *, file: str | os.PathLike[str] | None = None,
            trust_code: bool = False) -> Any:
    """The object ``reference`` names; one ConfigError naming ``field`` when it cannot be had.
    ``file``: the trajectory file the reference was read from (see :func:`check_trusted`)."""
    check_trusted([(field, reference, None)], file, trust_code)
    module_name, _, attribute = reference.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except (Exception, SystemExit) as e:  # the user's module may fail in any way while importing, exit too
        raise ConfigError(field, reference, f"cannot import module {module_name!r} ({_raised(e)})") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(field, reference, f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(field, reference, f"{attribute!r} is a {type(obj).__name__}, not a function to call")
    return obj


def call(field: str, reference: str, kwargs: dict[str, Any], *, file: str | os.PathLike[str] | None = None,
         trust_code: bool = False) -> Any:
    """``resolve(reference)(**kwargs)``; an exception inside the user's function (a
    ``sys.exit`` too) becomes one ConfigError naming the field (with the exception's type
    and first line)."""
    check_trusted([(field, reference, kwargs)], file, trust_code)
    fn = resolve(field, reference, file=file, trust_code=trust_code)
    try:
        return fn(**kwargs)
    except (Exception, SystemExit) as e:
        raise ConfigError(field, reference, f"calling it with {field}_args = {kwargs!r} raised {_raised(e)}") from None


def _raised(e: BaseException) -> str:
    """'Type: first line of the message' (SystemExit(code) for an exit)."""
    if isinstance(e, SystemExit):
        return f"SystemExit({e.code!r}): user code tried to end the process"
    message = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {message}"


def qualified_name(obj: Any) -> str:
    """'module.qualname' of a function or class (or of an instance's class)."""
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(obj).__name__)}"
