"""Generic ODE integration on torch tensors. Knows nothing about networks.

    integrate(problem, y0, (t0, t_end), method, save_at=..., observers=..., events=...)

A problem maps (t, y) to an :class:`Evaluation` (dy/dt plus named auxiliary values); a
method is a stepper (Euler, exact momentum, Chebyshev, exponential Rosenbrock) under a
controller (:class:`Adaptive`), a torchdiffeq solver (:class:`TorchDiffEq`), SUNDIALS'
CVODE (:class:`Sundials`) or torchode's Tsit5 (:class:`TorchODE`); observers see every
accepted step and every save (served from the methods' dense output); events stop it.
"""

from .lazy import make_lazy

# Imported on first use, so that importing one submodule, or gflow's command line, does not
# load torch and every backend: `gflow --help` starts in a fraction of a second.
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
    **dict.fromkeys(("CountingProblem", "Evaluation", "FunctionProblem", "Problem", "State"), "problem"),
    **dict.fromkeys(("Euler", "ExactMomentum", "HeavyBall", "Stepper"), "steppers"),
    "Sundials": "sundials",
    "TorchDiffEq": "torchdiffeq_backend",
    "TorchODE": "torchode_backend",
}

__all__ = sorted(_WHERE)
make_lazy(__name__, _WHERE)
