"""Packages whose public names are imported on first use (PEP 562), so that importing one
submodule, or a command line's parser, does not load torch and everything else: ``solvers``
and ``gflow`` use it for their ``__init__``."""

from __future__ import annotations

import importlib
import sys
import types


class LazyPackage(types.ModuleType):
    """A package module whose names in ``_WHERE`` (name -> submodule) load on first use.

    The import system binds a submodule to its package's attribute of the same name; where a
    submodule is named for the function it exports (``gflow.run``, ``solvers.integrate``),
    the attribute stays the function, as an eager ``from .run import run`` left it."""

    _WHERE: dict[str, str] = {}

    def __setattr__(self, name: str, value: object) -> None:
        if not (name in self._WHERE and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)

    def __getattr__(self, name: str) -> object:
        if name not in self._WHERE:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        where, _, attribute = self._WHERE[name].partition(":")
        value = getattr(importlib.import_module(f".{where}", self.__name__), attribute or name)
        super().__setattr__(name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._WHERE})


def make_lazy(name: str, where: dict[str, str]) -> None:
    """Turn the package ``name`` (call from its ``__init__`` with ``__name__``) into a
    :class:`LazyPackage` whose ``where`` maps each public name to its submodule (or to
    "submodule:attribute" when the two names differ)."""
    module = sys.modules[name]
    module.__class__ = type("LazyPackage", (LazyPackage,), {"_WHERE": where})
