"""RunConfig: everything that defines a run, validated, round-tripped through TOML and JSON.

Every field is a flag of ``gflow run`` (the same name with dashes), whose help text is the
field's own (``RunConfig.help(name)``), so the command line and the config cannot drift.
Validation happens at construction, so no run starts and no file is written with a bad value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from solvers.torchdiffeq_methods import FIXED, METHODS

from ._toml import read_toml
from .errors import ConfigError, GflowError

DATASETS = ("digits", "fashion-mnist", "mnist", "teacher")
LABELS = ("parity", "halves", "classes")
ARCHS = ("fc", "cnn")
ACTIVATIONS = ("softplus", "relu", "swish", "tanh")
PARAMETRIZATIONS = ("ntk", "mean-field", "standard")
LOSSES = ("softhinge", "hinge", "qhinge", "mse", "cross-entropy")
NATIVE_SOLVERS = ("gradient-ratio", "momentum", "chebyshev", "exponential")
ANCHORS = ("cvode", "tsit5")  # SUNDIALS' BDF and torchode's Tsit5: pip install gflow[stiff]
DISCRETE = ("gd", "heavy-ball")  # training itself, at learning rate lr: t = k lr
MAX_SAVES = 1_000_000
TIGHT = 1e-3  # the exponential method's tight-tolerance scheme starts at this rtol
MAX_FIXED_STEPS = 10**9  # steps of a fixed-step method or iterations of gd / heavy-ball
SOLVERS = NATIVE_SOLVERS + METHODS + ANCHORS + DISCRETE
FLOWS = ("gradient", "momentum", "central", "modified")
GD_FLOWS = ("central", "modified")  # flows of gradient descent at lr itself (gflow.central)
# The methods a flow of gradient descent may use: the central flow's mode switches are events
# located on a method's dense output; the modified flow's field is a gradient's (real spectrum).
GD_FLOW_SOLVERS = {"central": ("exponential", *METHODS), "modified": ("exponential", "chebyshev", "cvode", "tsit5", *METHODS)}
CONTROLLERS = ("paper", "ratio-target")
KERNEL_OUTPUTS = ("trace", "full")
DEVICES = ("cpu", "cuda", "cuda:N")
DEVICE = re.compile(r"^(cpu|cuda|cuda:[0-9]{1,3})$")
BATCHNORM = ("calibrate", "as-is", "refuse")
ENSEMBLE_EVALS = ("auto", "vmap", "sequential")
SAVE_SPACINGS = ("log", "linear")
WEIGHT_DECAY_CENTERS = ("zero", "init")
DTYPES = ("float64", "float32")

# "package.module:attribute" (attribute may be dotted): what importlib can resolve.
REFERENCE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _f(default: Any, help: str) -> Any:
    """A RunConfig field with its help text (the flag's --help line)."""
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RunConfig:
    """One run: data, network, loss, solver, schedule. Defaults give the paper's setting
    (seed 001: FC L=3 softplus, soft hinge, gradient flow under the gradient-ratio
    controller) on scikit-learn's bundled digits with parity labels.

    Your own network, data and loss enter through importable references (``model``,
    ``data``, ``loss`` = "package.module:attribute") with their keyword arguments
    (``model_args``, ``data_args``); the built-in fields they replace must then stay unset.
    """

    # data
    dataset: str = _f("digits", "built-in data set")
    data_dir: str | None = _f(None, "directory of the IDX files (default /usr/share/datasets/DATASET)")
    ptr: int = _f(1000, "training points")
    pte: int = _f(500, "test points (0: no test split)")
    labels: str = _f("parity", "parity: +-1 by class parity; halves: +-1 by first/second half of the kept "
                     "classes; classes: labels 0..k-1 and k network outputs")
    classes: tuple[int, ...] | None = _f(None, "keep only these class labels (default all)")
    pca: int | None = _f(None, "project the inputs on this many principal components of the train set")
    downsample: int = _f(1, "average-pool square images by this factor (28x28 -> 7x7 at 4)")
    dim: int = _f(10, "input dimension of the teacher data set")
    data_seed: int = _f(0, "seed of the draw of train and test samples")
    data: str | None = _f(None, "your data: loader 'package.module:function' returning "
                          "(x_train, y_train, x_test, y_test); replaces the built-in data fields")
    data_args: dict[str, Any] = _f({}, "keyword arguments of the data loader (JSON object)")
    # network
    arch: str = _f("fc", "built-in network")
    depth: int = _f(3, "hidden layers (fc) or convolutions (cnn)")
    width: int = _f(100, "hidden width h (fc) or channels (cnn)")
    act: str = _f("softplus", "activation, normalised to unit second moment")
    parametrization: str = _f("ntk", "ntk: layers divided by sqrt(fan-in); mean-field: last layer by h; "
                              "standard: W ~ N(0, 1/fan-in)")
    kappa: float = _f(1.0, "output scale of the built-in network at initialisation")
    seed: int = _f(0, "seed of the initialisation (torch's global generator is seeded with it "
                   "before a model factory is called, with the run's dtype as torch's default)")
    ensemble: int = _f(1, "members: K runs with seeds seed, seed+1, ..., seed+K-1 and all else equal, into the "
                       "directory --out, one trajectory file per member (gflow.ensembles)")
    ensemble_eval: str = _f("auto", "how an ensemble's members are integrated: vmap (together, each with its own "
                            "steps and error control, their evaluations one vectorised call per round), sequential "
                            "(one after another, each bitwise its single run), auto (vmap on a GPU, sequential on "
                            "a CPU, where vmap measured no faster: docs/benchmarks/ensemble.md)")
    linearized: bool = _f(False, "train the tangent model f(w0) + J0 (w - w0) instead")
    model: str | None = _f(None, "your network: factory 'package.module:function' returning a "
                           "torch.nn.Module; replaces the built-in network fields")
    model_args: dict[str, Any] = _f({}, "keyword arguments of the model factory (JSON object)")
    width_from: str | None = _f(None, "the model_args key that is your network's width h, for the sqrt(h) alpha axes "
                                "of tables and figures (default: width, when model_args has it; otherwise the "
                                "run has no width and figures use alpha alone)")
    batchnorm: str = _f("calibrate", "BatchNorm layers of your network (run in eval mode, a fixed affine map): "
                        "calibrate: running statistics computed once on the training set at w0 and recorded in "
                        "the file; as-is: the module's own buffers; refuse: an error")
    # loss
    alpha: float = _f(1.0, "output scale: L = mean l(alpha (f - f0), y) / alpha^2")
    loss: str = _f("softhinge", "per-sample loss, or 'package.module:function' computing l(a, y)")
    beta: float = _f(20.0, "sharpness of the soft hinge softplus(beta (1 - y a)) / beta")
    centered: bool = _f(True, "subtract the initial output f0 (off: a = alpha f)")
    weight_decay: float = _f(0.0, "lambda of the penalty lambda/2 |w - c|^2 added to the loss (its gradient, "
                             "Hessian and stored losses include it; docs/CONVENTIONS.md)")
    weight_decay_center: str = _f("zero", "c of the weight decay: zero (c = 0) or init (c = w0)")
    # solver
    solver: str = _f("exponential", "integrator (gradient-ratio and momentum: the paper's steppers, step for step)")
    flow: str | None = _f(None, "ODE: gradient (default), momentum (implied by solver momentum), or the flows of "
                          "gradient descent at lr: central (its time average at the edge of stability) or modified "
                          "(dw/dt = -grad(L + lr/4 |grad L|^2)); docs/CONVENTIONS.md")
    controller: str = _f("paper", "step controller of gradient-ratio and momentum")
    tau: float = _f(1.0, "momentum time scale (momentum flow)")
    tau_over_h: float | None = _f(None, "state tau as the paper's schedule instead: tau = tau_over_h "
                                  "min(sqrt(h) alpha, tau_alpha_crit) (paper: 1e-3; docs/CONVENTIONS.md)")
    tau_alpha_crit: float | None = _f(None, "cap of sqrt(h) alpha in the tau schedule (paper: 1e3; default none)")
    max_dgrad: float = _f(1e-4, "gradient-turn bound of gradient-ratio and momentum")
    max_dout: float = _f(0.1, "bound on the change of alpha (f - f0) per step (gradient-ratio, momentum; inf: none)")
    dt0: float = _f(1.0, "first step size of the native solvers")
    rtol: float | None = _f(None, "relative tolerance of exponential, chebyshev, cvode, tsit5 and torchdiffeq methods "
                            "(default 1e-3 for exponential, chebyshev and cvode, whose error is measured on the "
                            "displacement from w0 (cvode: on w); 1e-7 for tsit5 and torchdiffeq's)")
    atol: float = _f(1e-9, "absolute tolerance of exponential, chebyshev, cvode, tsit5 and torchdiffeq methods")
    dt: float | None = _f(None, "step size of the fixed-step methods (euler, midpoint, rk4, implicit_adams)")
    lr: float | None = _f(None, "learning rate of gd and heavy-ball (t advances by lr per iteration), and of the "
                          "gradient descent the central and modified flows model")
    momentum_beta: float = _f(0.9, "momentum coefficient of heavy-ball, in [0, 1) (0: gd)")
    # schedule and stopping
    t_end: float = _f(1e4, "time to integrate to")
    saves: int = _f(100, "save times, spaced by save_spacing from save_t_min to t_end (t = 0 is saved too)")
    save_t_min: float = _f(1e-2, "first save time after t = 0")
    save_spacing: str = _f("log", "spacing of the save times: log (geometric) or linear")
    save_at: tuple[float, ...] | None = _f(None, "explicit save times in (0, t_end], instead of saves, save_t_min and "
                                           "save_spacing (t = 0 and t_end are saved too)")
    interpolate: bool | None = _f(None, "serve save times from the method's dense output instead of cutting steps "
                                  "to land on them (default: yes, but no for gradient-ratio and momentum, which "
                                  "reproduce the paper's steps)")
    state_saves: int | None = _f(None, "saves that store the full state, spread evenly over the schedule, the "
                                 "first and last always (default: as many as fit in 64 MB)")
    save_derivatives: bool = _f(False, "store dy/dt beside each stored state (cubic Hermite dense output "
                                "between them; without, Trajectory.at replays)")
    stop_margin: float | None = _f(None, "stop once every training margin alpha y (f - f0) reaches this")
    max_wall: float | None = _f(None, "stop after this many seconds (resumable)")
    max_steps: int | None = _f(None, "stop after this many accepted steps (resumable)")
    # kernel snapshots (kernel_n = 0: none during the run; they can be computed afterwards)
    kernel_n: int = _f(0, "NTK snapshots on the first K train points (0: none)")
    kernel_every: int = _f(10, "take a kernel snapshot every this many saves")
    kernel_memory_mb: int = _f(2048, "memory bound on kernel temporaries (MiB)")
    kernel_outputs: str = _f("trace", "for k outputs: trace (K x K, summed over outputs) or full (Kk x Kk)")
    # curvature
    hessian_k: int = _f(0, "top eigenvalues of the loss Hessian (sharpness first) at every save, by Lanczos on "
                        "exact Hessian-vector products (0: off)")
    hessian_tol: float = _f(1e-6, "relative accuracy of the Hessian eigenvalues")
    # compute
    chunk: int | None = _f(None, "evaluate the batch in chunks of this many points (less memory)")
    compile: bool | None = _f(None, "evaluate the loss and its gradient through torch.compile, falling back to eager "
                              "evaluation with a note when the model does not compile (1.02-1.2x faster per evaluation on a "
                              "CPU; compiling takes 4-20 s); default: compile when the training set's forward pass "
                              "produces at least 1e7 elements (gflow.compilation), where that pays back within a short run")
    device: str = _f("cpu", "where tensors live: cpu, cuda, or one GPU as cuda:N")
    threads: int | None = _f(None, "torch threads of the run (default: OMP_NUM_THREADS, else the cores other "
                             "processes leave free, at least 1; a sweep worker's share of the cores; recorded in "
                             "the file)")
    dtype: str = _f("float64", "floating-point precision (a built-in network draws w0 from the seed in this "
                               "precision: float32's w0 is its own draw, not float64's rounded)")

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in TUPLE_ITEMS and isinstance(value, list):
                object.__setattr__(self, f.name, value := tuple(value))
            _check_type(f.name, value, FIELD_TYPES[f.name])
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
        if self.solver in ANCHORS and self.interpolate is False:
            raise ConfigError("interpolate", self.interpolate, f"solver {self.solver} always serves save times from "
                              "its dense output (it would restart at every save): leave interpolate unset")
        if not 0 <= self.momentum_beta < 1:
            raise ConfigError("momentum_beta", self.momentum_beta, "must be in [0, 1)")
        if self.solver in DISCRETE:
            self._check_discrete()
        if self.flow in GD_FLOWS:
            self._check_gd_flow()
        if self.save_at is not None:
            changed = [n for n in ("saves", "save_t_min", "save_spacing") if getattr(self, n) != _DEFAULTS[n]]
            if changed:
                raise ConfigError(changed[0], getattr(self, changed[0]), "save_at lists the save times: leave "
                                  "saves, save_t_min and save_spacing unset")
            if self.save_at[-1] > self.t_end:
                raise ConfigError("save_at", list(self.save_at), f"must lie in (0, t_end = {self.t_end:g}]")
        if self.width_from is not None and self.model is None:
            raise ConfigError("width_from", self.width_from, "names a model_args key of your model factory "
                              "(model = ...); the built-in network's width is width")
        if self.tau_alpha_crit is not None and self.tau_over_h is None:
            raise ConfigError("tau_alpha_crit", self.tau_alpha_crit, "caps the tau schedule: give tau_over_h too")
        if self.tau_over_h is not None and self.tau != _DEFAULTS["tau"]:
            raise ConfigError("tau", self.tau, "is set by the schedule tau_over_h: give one or the other")
        if self.tau_over_h is not None and self.model is not None:
            raise ConfigError("tau_over_h", self.tau_over_h, "the schedule needs the width h of the built-in "
                              "network; with your own model give tau itself")
        if self.solver in FIXED and self.dt is None:
            raise ConfigError("dt", self.dt, f"solver {self.solver} takes fixed steps: give --dt > 0")
        if self.solver in FIXED and self.t_end / self.dt > MAX_FIXED_STEPS:
            raise ConfigError("dt", self.dt, f"solver {self.solver} would take t_end / dt = {self.t_end / self.dt:.3g} "
                              f"steps; at most {MAX_FIXED_STEPS:.0e} (use an adaptive solver)")
        if self.arch == "cnn" and self.pca is not None:
            raise ConfigError("pca", self.pca, "arch cnn needs the images themselves; leave pca unset")
        if self.pca is not None and self.pca > self.ptr:
            raise ConfigError("pca", self.pca, f"must be <= ptr ({self.ptr}) to fit the projection on the train set")
        if self.data is None and self.kernel_n > self.ptr:
            raise ConfigError("kernel_n", self.kernel_n, f"must be <= ptr ({self.ptr}): snapshots use the first K train points")
        if self.hessian_k > 0 and self.linearized:
            raise ConfigError("hessian_k", self.hessian_k, "the linearized model's Hessian is constant "
                              "(J0^T l'' J0): compute it once from the run instead")
        self._check_user_code("model", MODEL_FIELDS)
        self._check_user_code("data", DATA_FIELDS)

    def _check_discrete(self) -> None:
        """gd and heavy-ball iterate at t = k lr: they need lr, a horizon that is a whole
        number of iterations, and save times on that grid (never interpolated)."""
        if self.lr is None:
            raise ConfigError("lr", self.lr, f"solver {self.solver} needs a learning rate: give --lr > 0")
        iterations = self.t_end / self.lr
        if iterations > MAX_FIXED_STEPS:
            raise ConfigError("lr", self.lr, f"t_end / lr = {iterations:.3g} iterations; at most {MAX_FIXED_STEPS:.0e}")
        if abs(iterations - round(iterations)) > 1e-9 * iterations or round(iterations) < 1:
            k = max(round(iterations), 1)
            raise ConfigError("t_end", self.t_end, f"must be a whole number of iterations of lr = {self.lr:g} "
                              f"(e.g. t_end = {k * self.lr:.12g}, {k} iterations)")
        if self.interpolate:
            raise ConfigError("interpolate", self.interpolate, f"solver {self.solver} saves its own iterates "
                              "(save times are rounded to multiples of lr): leave interpolate unset")
        if self.solver == "gd" and self.flow == "momentum":
            raise ConfigError("flow", self.flow, "gd is plain gradient descent; for momentum use solver heavy-ball")
        if self.solver == "heavy-ball" and self.flow == "gradient":
            raise ConfigError("flow", self.flow, "heavy-ball carries a velocity (state (w, v)); leave flow unset")

    def _check_gd_flow(self) -> None:
        """The central and modified flows model gradient descent at lr: they need lr, the
        gradient flow's state (no momentum) and a method that suits them."""
        if self.lr is None:
            raise ConfigError("lr", self.lr, f"flow {self.flow} models gradient descent at a learning rate: give --lr > 0")
        allowed = GD_FLOW_SOLVERS[self.flow]
        if self.solver not in allowed:
            raise ConfigError("solver", self.solver, f"flow {self.flow} is integrated by {', '.join(allowed[:5])} or "
                              "another torchdiffeq method")
        if self.linearized:
            raise ConfigError("linearized", self.linearized, f"flow {self.flow} needs the network's curvature; the "
                              "linearized model's Hessian is constant")

    def _check_user_code(self, name: str, replaced: tuple[str, ...]) -> None:
        """With a model (data) reference, the built-in network (data) fields must stay unset,
        and keyword arguments need a reference to go to."""
        reference = getattr(self, name)
        if reference is None:
            if getattr(self, f"{name}_args"):
                raise ConfigError(f"{name}_args", getattr(self, f"{name}_args"),
                                  f"arguments of a {name} factory: give {name} = 'package.module:function' too")
            return
        for f in replaced:
            if getattr(self, f) != _DEFAULTS[f]:
                raise ConfigError(f, getattr(self, f), f"sets the built-in {'network' if name == 'model' else 'data'}, "
                                  f"which {name} = {reference!r} replaces: pass it in {name}_args")

    @property
    def network_width(self) -> float:
        """The width h of the sqrt(h) alpha axes: ``width`` for the built-in networks; for your
        model the ``model_args`` value that ``width_from`` names (default: the key ``width``);
        NaN when it has none (tables and figures then use alpha alone)."""
        if self.model is None:
            return float(self.width)
        value = self.model_args.get(self.width_from or "width")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

    @property
    def scheme(self) -> str:
        """The exponential Rosenbrock scheme of ``--solver exponential``: exprb53s3 (order 5) for
        gradient flow at rtol <= 1e-3, measured 1.2-1.7x fewer evaluations than exprb43 at
        errors of f(T) of 1e-5-1e-6 on the digits problems (with exprb43 on the steps where
        h rho > 150, see :class:`~solvers.ExponentialRosenbrock`); exprb43 (order 4) at looser
        rtol, where exprb53s3's long steps went wrong unnoticed by its error estimate (relative
        error of f(T) 5e-2 at rtol 1e-2 and alpha = 1, 0.17 at rtol 1e-1 and alpha = 1e-2,
        against exprb43's 2.5e-4 and 4.1e-3), and on the momentum flow, where exprb53s3 (the
        Jacobian has complex eigenvalues) needed 1.2-1.3x more evaluations."""
        return "exprb53s3" if not self.momentum and self.tolerance <= TIGHT else "exprb43"

    def describe_method(self) -> str:
        """The solver and the settings it uses (not those it ignores), e.g.
        ``exponential scheme=exprb53s3 rtol=0.0002 atol=1e-06``, ``exponential flow=central lr=0.5
        scheme=exprb53s3 ...`` or ``momentum tau=1 controller=paper max_dgrad=0.0001 max_dout=0.1``."""
        parts = [self.solver]
        if self.solver in DISCRETE:
            return " ".join(parts + [f"lr={self.lr:g}"] + ([f"beta={self.momentum_beta:g}"] if self.momentum else []))
        if self.momentum and self.solver != "momentum":
            parts.append("flow=momentum")
        if self.momentum:
            parts.append(f"tau={self.time_constant:g}")
        if self.flow in GD_FLOWS:
            parts += [f"flow={self.flow}", f"lr={self.lr:g}"]
        if self.solver in ("gradient-ratio", "momentum"):
            parts += [f"controller={self.controller}", f"max_dgrad={self.max_dgrad:g}", f"max_dout={self.max_dout:g}"]
        elif self.solver in FIXED:
            parts.append(f"dt={self.dt:g}")
        else:
            if self.solver == "exponential":
                parts.append(f"scheme={self.scheme}")
            parts += [f"rtol={self.tolerance:g}", f"atol={self.atol:g}"]
        return " ".join(parts)

    @property
    def tolerance(self) -> float:
        """The relative tolerance the solver uses: ``rtol``, or the solver's default. For the
        methods whose error is controlled on the displacement from w0: 2e-4 for the
        exponential method (exprb53s3; f(T) to ~1e-4 on digits at every alpha, below the
        paper's stepper's error at its default bound), 1e-3 for chebyshev and cvode;
        torchdiffeq's and torchode's measure it relative to |w|, which barely moves in the
        lazy regime, so they keep a tight 1e-7."""
        if self.rtol is not None:
            return self.rtol
        if self.solver == "exponential":
            return 2e-4
        return 1e-3 if self.solver in ("chebyshev", "cvode") else 1e-7

    @property
    def time_constant(self) -> float:
        """The momentum flow's tau: ``tau``, or with ``tau_over_h`` the schedule of Geiger et
        al.'s code, tau_over_h h min(1, tau_alpha_crit / alpha') in its units (alpha' =
        sqrt(h) alpha, its time t' = t sqrt(h) / alpha), which in gflow's units is

            tau = tau_over_h min(sqrt(h) alpha, tau_alpha_crit)

        (docs/CONVENTIONS.md derives it)."""
        if self.tau_over_h is None:
            return self.tau
        scale = math.sqrt(self.width) * self.alpha
        return self.tau_over_h * (scale if self.tau_alpha_crit is None else min(scale, self.tau_alpha_crit))

    @property
    def momentum(self) -> bool:
        """True when the ODE is the momentum flow (state (w, v))."""
        return self.solver in ("momentum", "heavy-ball") or self.flow == "momentum"

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
        """Write the config as TOML (fields left at None or empty are omitted)."""
        lines = [f"{k} = {_toml_value(v)}" for k, v in self.to_dict().items() if v is not None and v != {}]
        Path(path).write_text("\n".join(lines) + "\n")

    @staticmethod
    def help(name: str) -> str:
        """The help line of field ``name``: what it means, what is allowed, its default."""
        f = _FIELDS[name]
        text = f.metadata["help"]
        choices = _CHOICES.get(name)
        if choices:
            text += f" ({', '.join(choices)})"
        default = _DEFAULTS[name]
        if default is not None and default != {} and default is not False:
            text += f"; default {default:g}" if isinstance(default, float) else f"; default {default}"
        return text


MODEL_FIELDS = ("arch", "depth", "width", "act", "parametrization", "kappa")
DATA_FIELDS = ("dataset", "data_dir", "ptr", "pte", "labels", "classes", "pca", "downsample", "dim", "data_seed")
_FIELDS = {f.name: f for f in fields(RunConfig)}
_DEFAULTS = {f.name: ({} if f.default is dataclasses.MISSING else f.default) for f in fields(RunConfig)}


def _toml_value(v: Any) -> str:
    if isinstance(v, float) and not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(v)


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "a table of keyword arguments"}.get(t, str(t))


# The items of the list-valued fields.
TUPLE_ITEMS: dict[str, type] = {"classes": int, "save_at": float}

# Field types without typing introspection: (python type, may be None).
FIELD_TYPES: dict[str, tuple[type, bool]] = {}
for _f_ in fields(RunConfig):
    _ann = str(_f_.type)
    _base = {"str": str, "int": int, "float": float, "bool": bool, "tuple": tuple, "dict": dict}[
        _ann.split(" ")[0].split("[")[0]]
    FIELD_TYPES[_f_.name] = (_base, "None" in _ann)


def _check_type(name: str, value: Any, spec: tuple[type, bool]) -> None:
    base, optional = spec
    if value is None:
        if not optional:
            raise ConfigError(name, value, f"must be {_type_name(base)}")
        return
    if base is tuple:
        item = TUPLE_ITEMS[name]
        if not isinstance(value, tuple) or not all(isinstance(c, (int, item)) and not isinstance(c, bool) for c in value):
            raise ConfigError(name, value, "must be a list of class labels (integers)" if item is int
                              else "must be a list of numbers")
        return
    if base is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(name, value, "must be a table of keyword arguments (string keys)")
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError):
            raise ConfigError(name, value, "values must be numbers, strings, booleans, lists or tables") from None
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
        if not (value >= low and math.isfinite(value)):
            raise ConfigError(name, value, f"must be a finite number >= {low:g}")

    return check


def _count(low: int, high: int | None = None, why: str = "") -> Callable[[str, Any], None]:
    def check(name: str, value: Any) -> None:
        if not value >= low:
            raise ConfigError(name, value, f"must be >= {low}")
        if high is not None and value > high:
            raise ConfigError(name, value, f"must be <= {high:,}{why}")

    return check


def _positive(name: str, value: Any) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(name, value, "must be a finite number > 0")


def _positive_or_inf(name: str, value: Any) -> None:
    if not value > 0:
        raise ConfigError(name, value, "must be > 0 (inf disables the bound)")


def _scale(name: str, value: Any) -> None:
    if not 1e-150 <= value <= 1e150:
        raise ConfigError(name, value, "must lie in [1e-150, 1e150]: the loss divides by alpha^2")


def _classes(name: str, value: Any) -> None:
    if len(value) < 2 or len(set(value)) != len(value):
        raise ConfigError(name, list(value), "must list at least two distinct class labels")


def _reference(name: str, value: Any) -> None:
    if not REFERENCE.match(value):
        raise ConfigError(name, value, "must be an importable reference 'package.module:function'")


def _device(name: str, value: Any) -> None:
    if not DEVICE.match(value):
        raise ConfigError(name, value, "must be cpu, cuda or cuda:N (a GPU's index)")


def _save_at(name: str, value: Any) -> None:
    if not value or not all(math.isfinite(t) and t > 0 for t in value):
        raise ConfigError(name, list(value), "must list save times, each a finite number > 0")
    if list(value) != sorted(set(value)):
        raise ConfigError(name, list(value), "must be increasing, without repeats")
    if len(value) > MAX_SAVES:
        raise ConfigError(name, f"{len(value)} times", f"at most {MAX_SAVES:,} saves")


def _identifier(name: str, value: Any) -> None:
    if not value.isidentifier():
        raise ConfigError(name, value, "must name a keyword argument of the model factory")


def _loss(name: str, value: Any) -> None:
    if value not in LOSSES and not REFERENCE.match(value):
        raise ConfigError(name, value, f"must be one of {', '.join(LOSSES)}, or 'package.module:function'")


_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASETS, "labels": LABELS, "arch": ARCHS, "act": ACTIVATIONS, "parametrization": PARAMETRIZATIONS,
    "loss": LOSSES, "solver": SOLVERS, "flow": FLOWS, "controller": CONTROLLERS, "kernel_outputs": KERNEL_OUTPUTS,
    "device": DEVICES, "dtype": DTYPES, "batchnorm": BATCHNORM, "save_spacing": SAVE_SPACINGS,
    "ensemble_eval": ENSEMBLE_EVALS,
    "weight_decay_center": WEIGHT_DECAY_CENTERS,
}

_CHECKS: dict[str, Callable[[str, Any], None]] = {
    **{name: _one_of(options) for name, options in _CHOICES.items() if name not in ("loss", "device")},
    "device": _device,
    "loss": _loss,
    "model": _reference,
    "data": _reference,
    "classes": _classes,
    "ptr": _count(1),
    "pte": _count(0),
    "pca": _count(1),
    "downsample": _count(1),
    "dim": _count(1),
    "data_seed": _count(0),
    "depth": _count(1),
    "width": _count(1),
    "kappa": _positive,
    "seed": _count(0),
    "alpha": _scale,
    "beta": _positive,
    "rtol": _positive,
    "atol": _at_least(0),
    "dt": _positive,
    "tau": _positive,
    "max_dgrad": _positive,
    "max_dout": _positive_or_inf,
    "dt0": _positive,
    "t_end": _positive,
    "saves": _count(1, MAX_SAVES, " (each save writes a row of every table and may take a forward pass)"),
    "save_t_min": _positive,
    "state_saves": _count(2),
    "stop_margin": _positive,
    "max_wall": _positive,
    "max_steps": _count(1),
    "chunk": _count(1),
    "kernel_n": _count(0),
    "kernel_every": _count(1),
    "kernel_memory_mb": _count(1),
    "hessian_k": _count(0),
    "hessian_tol": _positive,
    "tau_over_h": _positive,
    "tau_alpha_crit": _positive,
    "lr": _positive,
    "weight_decay": _at_least(0),
    "ensemble": _count(1, 10_000),
    "threads": _count(1, 1024),
    "save_at": _save_at,
    "width_from": _identifier,
}
