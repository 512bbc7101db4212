"""Generic ODE integration on torch tensors. Knows nothing about networks.

    integrate(problem, y0, (t0, t_end), method, save_at=..., observers=..., events=...)

A problem maps (t, y) to an :class:`Evaluation` (dy/dt plus named auxiliary values); a
method is a stepper (Euler, exact momentum, Chebyshev, exponential Rosenbrock) under a
controller (:class:`Adaptive`), a torchdiffeq solver (:class:`TorchDiffEq`), SUNDIALS'
CVODE (:class:`Sundials`) or torchode's Tsit5 (:class:`TorchODE`); observers see every
accepted step and every save (served from the methods' dense output); events stop it.
"""

import sys
import types

# Imported on first use (PEP 562), so that importing one submodule, or gflow's command line,
# does not load torch and every backend: `gflow --help` starts in a fraction of a second.
_WHERE = {
    "Adaptive": "adaptive",
    "Chebyshev": "chebyshev",
    **dict.fromkeys(("Controller", "Decision", "FixedStep", "GradientRatio", "LocalError", "RatioTarget",
                     "hermite_error"), "controllers"),
    **dict.fromkeys(("Interpolant", "hermite", "hermite_step"), "dense"),
    **dict.fromkeys(("Condition", "Event", "MaxSteps", "Progress", "Stop", "WallClock"), "events"),
    **dict.fromkeys(("EXPRB43", "EXPRB53S3", "ExponentialRosenbrock", "Scheme"), "exponential"),
    **dict.fromkeys(("Counters", "Solution", "integrate"), "integrate"),
    **dict.fromkeys(("Method", "Segment"), "method"),
    **dict.fromkeys(("Observer", "SaveRecord", "StepRecord"), "observers"),
    **dict.fromkeys(("CountingProblem", "Evaluation", "FunctionProblem", "Problem"), "problem"),
    **dict.fromkeys(("Euler", "ExactMomentum", "HeavyBall", "Stepper"), "steppers"),
    "Sundials": "sundials",
    "TorchDiffEq": "torchdiffeq_backend",
    "TorchODE": "torchode_backend",
}

__all__ = sorted(_WHERE)


class _Package(types.ModuleType):
    """The import system binds a submodule to its package's attribute of the same name; where
    a submodule is named for the function it exports (integrate), the package's
    attribute stays the function, as an eager ``from .integrate import integrate`` left it."""

    def __setattr__(self, name: str, value: object) -> None:
        if not (name in _WHERE and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'solvers' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
