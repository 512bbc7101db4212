"""RunConfig: everything that defines a run, validated, round-tripped through TOML and JSON.

Every field is a flag of ``gflow run`` (the same name with dashes). Validation happens at
construction, so no run starts and no file is written with a bad value.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from solvers.torchdiffeq_backend import FIXED, METHODS

from ._toml import read_toml
from .errors import ConfigError, GflowError

DATASETS = ("digits", "fashion-mnist", "mnist", "teacher")
LABELS = ("parity", "halves")
ARCHS = ("fc", "cnn")
ACTIVATIONS = ("softplus", "relu", "swish", "tanh")
PARAMETRIZATIONS = ("ntk", "mean-field", "standard")
LOSSES = ("softhinge", "hinge", "qhinge", "mse")
NATIVE_SOLVERS = ("gradient-ratio", "momentum", "chebyshev", "exponential")
SOLVERS = NATIVE_SOLVERS + METHODS
FLOWS = ("gradient", "momentum")
CONTROLLERS = ("paper", "ratio-target")
DEVICES = ("cpu", "cuda")
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class RunConfig:
    """One run: data, network, loss, solver, schedule. Defaults give the paper's setting
    (seed 001: FC L=3 softplus, soft hinge, gradient flow under the gradient-ratio
    controller) on scikit-learn's bundled digits with parity labels."""

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    ptr: int = 1000
    pte: int = 500
    labels: str = "parity"
    classes: tuple[int, ...] | None = None
    pca: int | None = None
    downsample: int = 1  # average-pool square images by this factor (28x28 -> 7x7 at 4)
    dim: int = 10
    data_seed: int = 0
    # network
    arch: str = "fc"
    depth: int = 3
    width: int = 100
    act: str = "softplus"
    parametrization: str = "ntk"
    kappa: float = 1.0
    seed: int = 0
    linearized: bool = False
    # loss
    alpha: float = 1.0
    loss: str = "softhinge"
    beta: float = 20.0
    centered: bool = True
    # solver
    solver: str = "gradient-ratio"
    flow: str | None = None
    controller: str = "paper"
    tau: float = 1.0
    max_dgrad: float = 1e-4
    max_dout: float = 0.1
    dt0: float = 1.0
    rtol: float = 1e-7
    atol: float = 1e-9
    dt: float | None = None
    # schedule and stopping
    t_end: float = 1e4
    saves: int = 100
    save_t_min: float = 1e-2
    stop_margin: float | None = None
    max_wall: float | None = None
    max_steps: int | None = None
    # kernel snapshots (kernel_n = 0: none during the run; they can be computed afterwards)
    kernel_n: int = 0
    kernel_every: int = 10
    kernel_memory_mb: int = 2048  # bound on kernel temporaries: Jacobian blocks, or Gram blocks for dense nets
    # compute
    chunk: int | None = None
    device: str = "cpu"
    dtype: str = "float64"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "classes" and isinstance(value, list):
                object.__setattr__(self, "classes", value := tuple(value))
            _check_type(f.name, value, _TYPES[f.name])
        for name, check in _CHECKS.items():
            value = getattr(self, name)
            if value is not None:
                check(name, value)
        if self.solver == "momentum" and self.flow == "gradient":
            raise ConfigError("flow", self.flow, "solver momentum integrates the momentum flow; leave flow unset")
        if self.solver == "gradient-ratio" and self.flow == "momentum":
            raise ConfigError("flow", self.flow, "solver gradient-ratio integrates the gradient flow; use solver momentum")
        if self.solver == "chebyshev" and self.flow == "momentum":
            raise ConfigError("flow", self.flow, "solver chebyshev needs a real spectrum (gradient flow); "
                              "for the momentum flow use momentum, exponential or a torchdiffeq method")
        if self.solver in FIXED and self.dt is None:
            raise ConfigError("dt", self.dt, f"solver {self.solver} takes fixed steps: give --dt > 0")
        if self.arch == "cnn" and self.pca is not None:
            raise ConfigError("pca", self.pca, "arch cnn needs the images themselves; leave pca unset")
        if self.pca is not None and self.pca > self.ptr:
            raise ConfigError("pca", self.pca, f"must be <= ptr ({self.ptr}) to fit the projection on the train set")

    @property
    def momentum(self) -> bool:
        """True when the ODE is the momentum flow (state (w, v))."""
        return self.solver == "momentum" or self.flow == "momentum"

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["classes"] is not None:
            d["classes"] = list(d["classes"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise GflowError(f"{source}: unknown field {unknown[0]!r}; allowed fields: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> RunConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise GflowError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise GflowError(f"{source}: expected a JSON object of RunConfig fields")
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a TOML file of RunConfig fields (a ``[run]`` table or top-level keys)."""
        data = read_toml(path, "config")
        if set(data) == {"run"} and isinstance(data["run"], dict):
            data = data["run"]
        return cls.from_dict(data, str(path))

    def save(self, path: str | Path) -> None:
        """Write the config as TOML (fields left at None are omitted)."""
        lines = [f"{k} = {_toml_value(v)}" for k, v in self.to_dict().items() if v is not None]
        Path(path).write_text("\n".join(lines) + "\n")


def _toml_value(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    return json.dumps(v)


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))


# Field types without typing introspection: (python type, may be None, is a list of ints).
_TYPES: dict[str, tuple[type, bool]] = {}
for _f in fields(RunConfig):
    _ann = str(_f.type)
    _base = {"str": str, "int": int, "float": float, "bool": bool, "tuple": tuple}[_ann.split(" ")[0].split("[")[0]]
    _TYPES[_f.name] = (_base, "None" in _ann)


def _check_type(name: str, value: Any, spec: tuple[type, bool]) -> None:
    base, optional = spec
    if value is None:
        if not optional:
            raise ConfigError(name, value, f"must be {_type_name(base)}")
        return
    if base is tuple:
        if not isinstance(value, tuple) or not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
            raise ConfigError(name, value, "must be a list of class labels (integers)")
        return
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if base is not bool and isinstance(value, bool) or not isinstance(value, base):
        raise ConfigError(name, value, f"must be {_type_name(base)}")


def _one_of(options: tuple[str, ...]) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if value not in options:
            raise ConfigError(name, value, f"must be one of {', '.join(options)}")

    return check


def _at_least(low: float) -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if not value >= low:
            raise ConfigError(name, value, f"must be >= {low:g}")

    return check


def _positive(name: str, value: Any) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(name, value, "must be a finite number > 0")


def _positive_or_inf(name: str, value: Any) -> None:
    if not value > 0:
        raise ConfigError(name, value, "must be > 0 (inf disables the bound)")


def _classes(name: str, value: Any) -> None:
    if len(value) < 2 or len(set(value)) != len(value):
        raise ConfigError(name, list(value), "must list at least two distinct class labels")


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "dataset": _one_of(DATASETS),
    "labels": _one_of(LABELS),
    "classes": _classes,
    "ptr": _at_least(1),
    "pte": _at_least(0),
    "pca": _at_least(1),
    "downsample": _at_least(1),
    "dim": _at_least(1),
    "data_seed": _at_least(0),
    "arch": _one_of(ARCHS),
    "depth": _at_least(1),
    "width": _at_least(1),
    "act": _one_of(ACTIVATIONS),
    "parametrization": _one_of(PARAMETRIZATIONS),
    "kappa": _positive,
    "seed": _at_least(0),
    "alpha": _positive,
    "loss": _one_of(LOSSES),
    "beta": _positive,
    "solver": _one_of(SOLVERS),
    "flow": _one_of(FLOWS),
    "rtol": _positive,
    "atol": _at_least(0),
    "dt": _positive,
    "controller": _one_of(CONTROLLERS),
    "tau": _positive,
    "max_dgrad": _positive,
    "max_dout": _positive_or_inf,
    "dt0": _positive,
    "t_end": _positive,
    "saves": _at_least(1),
    "save_t_min": _positive,
    "stop_margin": _positive,
    "max_wall": _positive,
    "max_steps": _at_least(1),
    "chunk": _at_least(1),
    "kernel_n": _at_least(0),
    "kernel_every": _at_least(1),
    "kernel_memory_mb": _at_least(1),
    "device": _one_of(DEVICES),
    "dtype": _one_of(DTYPES),
}
