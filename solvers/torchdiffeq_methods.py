"""The torchdiffeq methods offered behind :class:`~solvers.TorchDiffEq`, by name: a module of
its own, without torch, so that a config can be validated (and ``gflow --help`` printed)
without loading torch."""

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED = ("euler", "midpoint", "rk4", "implicit_adams")
# SciPy's LSODA, BDF and Radau (torchdiffeq's scipy_solver) are not offered: in their stiff
# mode they build a dense N x N Jacobian by finite differences, N evaluations and N^2 memory
# for N parameters (a 50-point problem did not pass t = 5 in 90 s).
METHODS = ADAPTIVE + FIXED
