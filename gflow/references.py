"""Importable references to user code: "package.module:attribute".

A config names a model factory, a data loader or a loss by where it can be imported from,
so the CLI, sweep workers and ``resume`` can rebuild a run in another process without
pickling anything. References are resolved with importlib, never evaluated. The working
directory is searched too (as ``python -m`` would), so a module beside the config works
from the ``gflow`` command.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from .errors import ConfigError


def resolve(field: str, reference: str) -> Any:
    """The object ``reference`` names; one ConfigError naming ``field`` when it cannot be had."""
    module_name, _, attribute = reference.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:  # the user's module may fail in any way while importing
        raise ConfigError(field, reference, f"cannot import module {module_name!r} ({type(e).__name__}: {e})") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ConfigError(field, reference, f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(field, reference, f"{attribute!r} is a {type(obj).__name__}, not a function to call")
    return obj


def call(field: str, reference: str, kwargs: dict[str, Any]) -> Any:
    """``resolve(reference)(**kwargs)``; an exception inside the user's function becomes one
    ConfigError naming the field (with the exception's type and first line)."""
    fn = resolve(field, reference)
    try:
        return fn(**kwargs)
    except Exception as e:
        message = str(e).splitlines()[0] if str(e) else ""
        raise ConfigError(field, reference, f"calling it with {field}_args = {kwargs!r} raised "
                          f"{type(e).__name__}: {message}") from None


def qualified_name(obj: Any) -> str:
    """'module.qualname' of a function or class (or of an instance's class)."""
    target = obj if hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(obj).__name__)}"
