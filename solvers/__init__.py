"""Generic ODE integration on torch tensors. Knows nothing about networks.

    integrate(problem, y0, (t0, t_end), method, save_at=..., observers=..., events=...)

A problem maps (t, y) to an :class:`Evaluation` (dy/dt plus named auxiliary values); a
method is a stepper (Euler, exact momentum, Chebyshev, exponential Rosenbrock) under a
controller (:class:`Adaptive`), a torchdiffeq solver (:class:`TorchDiffEq`), SUNDIALS'
CVODE (:class:`Sundials`) or torchode's Tsit5 (:class:`TorchODE`); observers see every
accepted step and every save (served from the methods' dense output); events stop it.
"""

from .adaptive import Adaptive
from .chebyshev import Chebyshev
from .controllers import (
    Controller,
    Decision,
    FixedStep,
    GradientRatio,
    LocalError,
    RatioTarget,
    hermite_error,
)
from .dense import Interpolant, hermite, hermite_step
from .events import Condition, Event, MaxSteps, Progress, Stop, WallClock
from .exponential import EXPRB43, EXPRB53S3, ExponentialRosenbrock, Scheme
from .integrate import Counters, Solution, integrate
from .method import Method, Segment
from .observers import Observer, SaveRecord, StepRecord
from .problem import CountingProblem, Evaluation, FunctionProblem, Problem
from .steppers import Euler, ExactMomentum, HeavyBall, Stepper
from .sundials import Sundials
from .torchdiffeq_backend import TorchDiffEq
from .torchode_backend import TorchODE

__all__ = [
    "Adaptive",
    "Chebyshev",
    "Condition",
    "Controller",
    "Counters",
    "CountingProblem",
    "Decision",
    "Euler",
    "Evaluation",
    "Event",
    "ExactMomentum",
    "EXPRB43",
    "EXPRB53S3",
    "ExponentialRosenbrock",
    "FixedStep",
    "FunctionProblem",
    "GradientRatio",
    "HeavyBall",
    "LocalError",
    "MaxSteps",
    "Method",
    "Observer",
    "Problem",
    "Progress",
    "RatioTarget",
    "SaveRecord",
    "Scheme",
    "Segment",
    "Solution",
    "StepRecord",
    "Stepper",
    "Stop",
    "Sundials",
    "TorchDiffEq",
    "TorchODE",
    "WallClock",
    "Interpolant",
    "hermite",
    "hermite_error",
    "hermite_step",
    "integrate",
]
