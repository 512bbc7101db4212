"""Work-precision benchmark of every method on the same gradient-flow problems.

For each problem a reference f_ref(T) comes from a high-order method at tight tolerance;
each method at each tolerance reports gradient evaluations (accepted + rejected), wall
time, wall time per evaluation over the raw cost of one full-batch forward+backward, and

    error = ||f(T) - f_ref(T)|| / ||f_ref(T) - f(0)||     (train outputs)
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from solvers import integrate

from . import allocator
from .config import RunConfig
from .flow import GradientFlow, build
from .methods import interpolates, make_events, make_method, save_times
from .run import _integrate_into, run
from .store import TrajectoryFile, TrajectoryWriter


@dataclass(frozen=True)
class Variant:
    """A method at one tolerance: the RunConfig fields that select it."""

    label: str
    fields: dict = field(default_factory=dict)
    tolerance: float = float("nan")


def default_variants(momentum: bool, quick: bool = False) -> list[Variant]:
    """The paper's stepper at three bounds (its default 1e-4 among them); the exponential
    Rosenbrock method from rtol 1e-1 to 1e-6; the anchors: SUNDIALS' CVODE (BDF with
    Newton-GMRES) from 1e-2 to 1e-6 and torchode's Tsit5 (when ``gflow[stiff]`` is
    installed), torchdiffeq's dopri5; the Runge-Kutta-Chebyshev stepper (gradient flow only:
    its stability interval is real). Every one at the default save schedule.

    SciPy's LSODA/BDF/Radau are left out: they build a dense N x N Jacobian by finite
    differences, unusable at N = 26,500 parameters; CVODE is the matrix-free BDF.
    """
    native = "momentum" if momentum else "gradient-ratio"
    out = [Variant(f"{native} (paper)", {"solver": native, "max_dgrad": r}, r)
           for r in ((1e-4,) if quick else (1e-3, 1e-4, 1e-5))]

    def tolerances(method: str, *rtols: float) -> None:
        for r in rtols[:1] if quick else rtols:
            out.append(Variant(method, {"solver": method, "rtol": r, "atol": r * 1e-3}, r))

    tolerances("exponential", 1e-3, 1e-1, 1e-2, 1e-4, 1e-5, 1e-6)
    if not momentum:
        tolerances("chebyshev", 1e-3, 1e-2, 1e-4)
    if _installed("sksundae"):
        tolerances("cvode", 1e-3, 1e-2, 1e-4, 1e-5, 1e-6)
    if _installed("torchode"):
        tolerances("tsit5", 1e-3, 1e-5)
    tolerances("dopri5", 1e-3)
    return out


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _raw_pass(flow: GradientFlow) -> Callable[[], None]:
    """One full-batch forward+backward of the plain nn.Module (the floor)."""
    module, x, y, f0 = flow.model.module, flow.x_train, flow.y_train, flow.f0_train
    alpha = flow.alpha

    def once() -> None:
        module.zero_grad(set_to_none=True)
        loss = flow.loss_fn(alpha * (module(x).reshape(f0.shape) - f0), y).mean() / alpha**2
        loss.backward()

    return once


def evaluation_cost(flow: GradientFlow, repeats: int = 3) -> float:
    """Seconds of one evaluation of ``flow``'s vector field: the median of ``repeats`` after
    one that compiles where the flow compiles, each waited for on a GPU."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        flow.evaluate(0.0, flow.y0)
        if flow.y0.is_cuda:
            torch.cuda.synchronize(flow.y0.device)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def raw_cost(flow: GradientFlow, repeats: int = 30) -> float:
    """Seconds of one full-batch forward+backward of the plain nn.Module (median)."""
    once = _raw_pass(flow)
    for _ in range(3):
        once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def reference(cfg: RunConfig, rtol: float = 1e-9, cache: Path | None = None) -> np.ndarray:
    """f(T) on the train set from dopri8 at tight tolerance (independent of every method
    benchmarked). With ``cache``, kept there under a digest of the problem's config and
    reused: the reference is the longest run of a benchmark."""
    ref_cfg = cfg.replace(solver="dopri8", rtol=rtol, atol=rtol * 1e-2,
                          flow="momentum" if cfg.momentum else None, saves=1)
    path = None
    if cache is not None:
        digest = hashlib.sha256(ref_cfg.to_json().encode()).hexdigest()[:16]
        path = Path(cache) / f"reference-{digest}.npy"
        if path.is_file():
            return np.load(path, allow_pickle=False)
    flow = build(ref_cfg)
    sol = integrate(flow, flow.y0, (0.0, cfg.t_end), make_method(ref_cfg, flow))
    f_ref = flow.outputs(flow.weights(sol.y), flow.x_train).cpu().numpy()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, f_ref, allow_pickle=False)
    return f_ref


class _Parts:
    """Exclusive wall time per part of a run: functions wrapped with :meth:`clock` add their
    time to their part, less the time of wrapped calls made inside them (a Krylov extension
    contains an evaluation: the evaluation's time is the evaluation's, not the Krylov
    space's)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # time of wrapped calls inside the open calls

    def clock(self, part: str, function: Callable) -> Callable:
        def clocked(*args: Any, **kwargs: Any) -> Any:
            self._inner.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._inner.pop()
                self.seconds[part] = self.seconds.get(part, 0.0) + elapsed - inner
                if self._inner:
                    self._inner[-1] += elapsed
        return clocked


# Where a run's wall time goes (gflow bench overhead's "parts"): (part, module, class or
# None for a module function, attribute). The exponential method's are its Krylov space
# (the products' bookkeeping and the orthogonalisation), the phi functions of the small
# Arnoldi matrix, and the dense output that serves the saves.
_PARTS = (
    ("krylov", "solvers.krylov", "JacobianKrylov", "extend"),
    ("krylov", "solvers.krylov", "JacobianKrylov", "project"),
    ("krylov", "solvers.krylov", "JacobianKrylov", "combine"),
    ("krylov", "solvers.krylov", "JacobianKrylov", "apply"),
    ("phi", "solvers.exponential", None, "phi_vectors"),
    ("phi", "solvers.exponential", "ExponentialRosenbrock", "_ritz"),
    ("dense output", "solvers.exponential", "ExponentialRosenbrock", "interpolant"),
    ("dense output", "solvers.integrate", None, "hermite_step"),
)


@contextmanager
def _clocked_parts(parts: _Parts) -> Iterator[None]:
    """The functions of _PARTS wrapped with ``parts``' clocks inside, restored after."""
    import importlib

    saved = []
    for part, module_name, owner_name, attribute in _PARTS:
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        original = owner.__dict__[attribute] if owner_name else getattr(module, attribute)
        saved.append((owner, attribute, original))
        function = original.__func__ if isinstance(original, staticmethod) else original
        wrapped = parts.clock(part, function)
        if attribute == "interpolant":  # the interpolant is a closure: clock its calls, not its making
            wrapped = _clocking_interpolant(parts, function)
        setattr(owner, attribute, staticmethod(wrapped) if isinstance(original, staticmethod) else wrapped)
    try:
        yield
    finally:
        for owner, attribute, original in reversed(saved):
            setattr(owner, attribute, original)


def _clocking_interpolant(parts: _Parts, make: Callable) -> Callable:
    def interpolant(*args: Any, **kwargs: Any) -> Callable:
        return parts.clock("dense output", make(*args, **kwargs))
    return interpolant


def _timed_run(cfg: RunConfig, out: Path | None) -> dict[str, float]:
    """One run of ``cfg`` (stored into ``out``, or with no observer when None): its wall
    time over the seconds spent inside the gradient evaluations, and the share of its wall
    time spent inside the trajectory writer. Both are ratios within the one run. The clock
    starts once the problem is built (data loaded, network initialised): that is paid once
    per run, not per evaluation, and is reported apart as ``setup_s``. Opening the file
    and writing the initial state count as storage."""
    start = time.perf_counter()
    flow = build(cfg)
    built = time.perf_counter()
    parts = _Parts()
    flow.evaluate = parts.clock("evaluations", flow.evaluate)
    flow.outputs = parts.clock("save forwards", flow.outputs)  # the network at interpolated saves
    with _clocked_parts(parts):
        if out is None:
            integrate(flow, flow.y0, (0.0, cfg.t_end), make_method(cfg, flow), save_at=save_times(cfg),
                      events=make_events(cfg, flow))
        else:
            opened = time.perf_counter()
            writer = TrajectoryWriter(out, flow, save_times(cfg))
            parts.seconds["storage"] = time.perf_counter() - opened
            for name in ("on_step", "on_save", "finish"):
                setattr(writer, name, parts.clock("storage", getattr(writer, name)))
            _integrate_into(writer, flow, flow.y0, 0.0, save_times(cfg), progress=False)
    wall = time.perf_counter() - built
    shares = {f"share_{k.replace(' ', '_')}": v / wall for k, v in parts.seconds.items()}
    shares["share_rest"] = 1 - sum(shares.values())
    return {"over_evaluate": wall / parts.seconds["evaluations"], "storage_share": parts.seconds.get("storage", 0.0) / wall,
            "setup_s": built - start, **shares}


def _evaluate_over_raw(flow: GradientFlow, pairs: int = 200) -> float:
    """The flow's gradient evaluation over one raw forward+backward of the plain module:
    the two are called alternately, one of each per pair (in alternating order), so that
    both see the same machine speed; the ratio of their median times. (Bursts of ten of
    each spread 0.98-1.08 between repeats; single alternating calls 1.05-1.07.)"""
    raw = _raw_pass(flow)

    def evaluate() -> None:
        flow.evaluate(0.0, flow.y0)

    times: dict[Callable[[], None], list[float]] = {raw: [], evaluate: []}
    for k in range(pairs + 3):
        for call in (raw, evaluate) if k % 2 else (evaluate, raw):
            start = time.perf_counter()
            call()
            if k >= 3:  # warm-up
                times[call].append(time.perf_counter() - start)
    return float(np.median(times[evaluate]) / np.median(times[raw]))


def overhead(cfg: RunConfig, repeats: int = 3) -> dict[str, float]:
    """What one gradient evaluation costs inside a run, over one raw forward+backward of
    the plain nn.Module, factored into two ratios that can each be measured robustly:

        per_eval_over_raw = evaluate_over_raw * run_over_evaluate

    ``evaluate_over_raw``: the flow's evaluation (functional call, loss, autograd.grad)
    over the raw cost, timed in alternating bursts; ``run_over_evaluate``: a run's wall
    time over the seconds spent inside its evaluations (the stepper, controller, events
    and observers), from the same run. ``storage_share``: the stored run's seconds inside
    the trajectory writer over its wall time. Ratios of separately timed runs are not
    used: this machine's speed drifts by 10-20% between runs of a minute. Building the
    problem (loading the data, initialising the network) is paid once per run and is
    reported apart as ``setup_s``; medians over ``repeats`` runs are reported.

    ``share_*``: where the stored run's wall time goes, exclusive of nested parts:
    ``evaluations``, ``krylov`` (the exponential method's Krylov bookkeeping and
    orthogonalisation), ``phi`` (matrix exponentials of the Arnoldi matrix, Ritz values),
    ``dense_output`` (serving saves from a step's interpolant), ``save_forwards`` (the
    network's outputs on the train and test sets at saves, a forward pass each where the
    save's state was interpolated), ``storage`` (the rest of the writer: rows, states,
    checkpoints, flushes, kernel or Hessian work), and ``rest`` (the controller, events,
    the integration loop: what no part claims)."""
    flow = build(cfg)
    evaluate_over_raw = _evaluate_over_raw(flow)
    with tempfile.TemporaryDirectory() as tmp:
        stored = [_timed_run(cfg, Path(tmp) / f"s{k}.h5") for k in range(repeats)]
        evals = TrajectoryFile(Path(tmp) / "s0.h5").summary()["evals"]
    bare = [_timed_run(cfg, None) for _ in range(repeats)]

    def median(runs: list[dict[str, float]], key: str) -> float:
        return float(np.median([r[key] for r in runs]))

    shares = sorted({k for r in stored for k in r if k.startswith("share_")})
    return {**peak_memory(cfg, repeats),
        "evals": evals, "raw_ms": raw_cost(flow, repeats=100) * 1e3, "evaluate_over_raw": evaluate_over_raw,
        "run_over_evaluate": median(stored, "over_evaluate"),
        "per_eval_over_raw": evaluate_over_raw * median(stored, "over_evaluate"),
        "bare_per_eval_over_raw": evaluate_over_raw * median(bare, "over_evaluate"),
        "storage_share": median(stored, "storage_share"), "setup_s": median(stored, "setup_s"),
        **{k: float(np.median([r.get(k, 0.0) for r in stored])) for k in shares},
    }


def _selected(v: Variant, methods: list[str] | None, tolerances: list[float] | None) -> bool:
    return ((not methods or v.label in methods or v.fields["solver"] in methods)
            and (not tolerances or any(math.isclose(v.tolerance, r) for r in tolerances)))


def check_selection(variants: list[Variant], methods: list[str] | None, tolerances: list[float] | None) -> None:
    """Raise ValueError naming a method (label or solver) or tolerance that none of
    ``variants`` has: a selection must not silently benchmark nothing."""
    for m in methods or []:
        if not any(_selected(v, [m], None) for v in variants):
            labels = dict.fromkeys(v.label for v in variants)
            raise ValueError(f"unknown benchmark method {m!r}; known: {', '.join(labels)}")
    for r in tolerances or []:
        if not any(_selected(v, None, [r]) for v in variants):
            known = sorted({v.tolerance for v in variants})
            raise ValueError(f"no benchmark variant at tolerance {r:g}; known: {', '.join(f'{k:g}' for k in known)}")


SAVE_COST_TOLERANCE = 1e-3  # where each interpolating method is also run with one save


def solvers_benchmark(
    problems: dict[str, RunConfig], methods: list[str] | None = None, tolerances: list[float] | None = None,
    quick: bool = False, progress: bool = True, cache: Path | None = None,
) -> pd.DataFrame:
    """One row per (problem, method, tolerance); see the module docstring for the columns.
    ``methods`` (labels or solver names) and ``tolerances`` restrict the default variants.
    Every run uses the problem's save schedule (the default one); the interpolating methods
    at tolerance 1e-3 are run again with a single save, and ``saves_cost`` is the ratio of
    their evaluations (the price of the save schedule). ``forwards``: forward passes made
    for saves at interpolated states (not gradient evaluations). ``cache``: where the
    references are kept between benchmarks."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in problems.items():
            flow = build(cfg)
            f0 = flow.f0_train.cpu().numpy()
            start = time.perf_counter()
            f_ref = reference(cfg, cache=cache)
            if progress:
                print(f"[{name}] reference in {time.perf_counter() - start:.0f} s; "
                      f"raw fwd+bwd {raw_cost(flow) * 1e3:.2f} ms")
            for v in [v for v in default_variants(cfg.momentum, quick) if _selected(v, methods, tolerances)]:
                fields = dict(v.fields)
                if cfg.momentum and fields["solver"] not in ("momentum",):
                    fields["flow"] = "momentum"
                run_cfg = cfg.replace(**fields)
                raw = raw_cost(flow, repeats=15)  # measured next to each run: load drifts
                traj = run(run_cfg, Path(tmp) / f"{name}-{len(rows)}.h5", progress=False)
                s = traj.summary()
                error = np.linalg.norm(traj.outputs(-1) - f_ref) / np.linalg.norm(f_ref - f0)
                saves_cost = math.nan
                if interpolates(run_cfg) and math.isclose(v.tolerance, SAVE_COST_TOLERANCE) and run_cfg.saves > 1:
                    alone = run(run_cfg.replace(saves=1), Path(tmp) / f"{name}-{len(rows)}-1.h5", progress=False)
                    saves_cost = s["evals"] / alone.summary()["evals"]
                rows.append({
                    "problem": name, "method": v.label, "tolerance": v.tolerance, "status": s["status"],
                    "evals": int(s["evals"]), "steps": int(s["step"]), "forwards": int(s["forwards"]),
                    "saves_cost": saves_cost, "wall_s": s["wall"], "per_eval_over_raw": s["wall"] / s["evals"] / raw,
                    "error": error,
                })
                if progress:
                    r = rows[-1]
                    print(f"[{name}] {v.label:24s} tol={v.tolerance:.0e} evals={r['evals']:6d} error={error:.2e} "
                          f"saves_cost={saves_cost:.2f} overhead={r['per_eval_over_raw']:.2f}x", flush=True)
    return pd.DataFrame(rows)


ACCURACIES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def evaluations_to_reach(table: pd.DataFrame, accuracies: tuple[float, ...] = ACCURACIES) -> pd.DataFrame:
    """For each problem and method, the evaluations its work-precision curve needs to reach
    a relative error of f(T) of each accuracy: on the curve's Pareto front (runs sorted by
    evaluations, each kept if more accurate than every cheaper one), interpolated
    log-linearly between the last run above the accuracy and the first at or below it; the
    cheapest run when even that one is below; NaN when no run reached it."""
    done = table[table["status"] == "finished"]
    rows = []
    for (problem, method), g in done.groupby(["problem", "method"], sort=False):
        front, best = [], math.inf
        for evals, error in sorted(zip(g["evals"], g["error"])):
            if error < best:
                front.append((float(evals), float(error)))
                best = error
        row = {"problem": problem, "method": method}
        for level in accuracies:
            k = next((i for i, (_, e) in enumerate(front) if e <= level), None)
            if k is None:
                value = math.nan
            elif k == 0:
                value = front[0][0]
            else:
                (n0, e0), (n1, e1) = front[k - 1], front[k]
                share = math.log(e0 / level) / math.log(e0 / e1)
                value = math.exp(math.log(n0) + share * math.log(n1 / n0))
            row[f"{level:g}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def markdown_tables(table: pd.DataFrame) -> str:
    """The work-precision table as Markdown, one table per problem: method, tolerance,
    status, gradient evaluations (Jacobian products counted), relative error of f(T), the
    save schedule's cost (evaluations with the default saves over one save, where measured)
    and the forward passes of interpolated saves."""
    reach = evaluations_to_reach(table)
    out = ["### Evaluations to reach a relative error of f(T) (interpolated on each method's curve)", "",
           "| problem | method | " + " | ".join(f"<= {a:g}" for a in ACCURACIES) + " |",
           "| --- | --- |" + " --- |" * len(ACCURACIES)]
    for _, r in reach.iterrows():
        cells = ["-" if math.isnan(r[f"{a:g}"]) else str(int(r[f"{a:g}"])) for a in ACCURACIES]
        out.append(f"| {r['problem']} | {r['method']} | " + " | ".join(cells) + " |")
    out.append("")
    for problem, sub in table.groupby("problem", sort=False):
        out += [f"### {problem}", "", "| method | tolerance | status | evaluations | error of f(T) | saves cost | forward passes |",
                "| --- | --- | --- | --- | --- | --- | --- |"]
        for _, r in sub.iterrows():
            cost = "" if math.isnan(r["saves_cost"]) else f"{r['saves_cost']:.2f}"
            out.append(f"| {r['method']} | {r['tolerance']:g} | {r['status']} | {int(r['evals'])} | {r['error']:.2e} | "
                       f"{cost} | {int(r['forwards'])} |")
        out.append("")
    return "\n".join(out)


def work_precision_plot(table: pd.DataFrame, path: str | Path) -> None:
    """Evaluations vs error, log-log, one panel per problem, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    problems = list(dict.fromkeys(table["problem"]))
    # One colour per method across panels, and a legend on each: panels hold different methods.
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {m: cycle[i % len(cycle)] for i, m in enumerate(dict.fromkeys(table["method"]))}
    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4.2), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        sub = table[table["problem"] == problem]
        for method, g in sub.groupby("method", sort=False):
            g = g.sort_values("evals")
            ax.loglog(g["evals"], g["error"], "o-", label=method, color=colour[method])
        ax.set_title(problem)
        # Labels on the decades only: matplotlib labels the minor ticks of a log axis that
        # spans less than a decade or two, and those labels overlap.
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("gradient evaluations")
        ax.set_ylabel("relative error of f(T) on train")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


PROBLEMS = ("digits-gf-a1e-2", "digits-gf-a1", "digits-gf-a1e2", "digits-mom-a1", "fashion-gf-a1")


def problems(names: list[str] | None = None, quick: bool = False) -> dict[str, RunConfig]:
    """The benchmark problems: digits FC (ptr 1000, L=3, h=100) at alpha 1e-2, 1, 1e2 under
    gradient flow, alpha 1 under momentum flow, and Fashion-MNIST two-class (ptr 10000,
    h 300; only on request and when the data is installed). ``quick`` shrinks everything
    to a seconds-long smoke test."""
    base = RunConfig(ptr=1000, pte=200, depth=3, width=100, t_end=1e4)  # the default save schedule
    if quick:
        base = base.replace(ptr=60, pte=20, width=16, t_end=20.0, saves=4)
        names = names or ["digits-gf-a1"]
    table = {
        "digits-gf-a1e-2": base.replace(alpha=1e-2),
        "digits-gf-a1": base,
        "digits-gf-a1e2": base.replace(alpha=1e2),
        "digits-mom-a1": base.replace(solver="momentum", tau=1.0),
    }
    if names and "fashion-gf-a1" in names:
        if not FASHION_DIR.is_dir():
            print(f"skipping fashion-gf-a1: {FASHION_DIR} absent (apt-get install dataset-fashion-mnist)")
        else:
            table["fashion-gf-a1"] = base.replace(dataset="fashion-mnist", labels="halves", ptr=10000, width=300,
                                                  t_end=1e3 if not quick else 5.0)
    unknown = set(names or []) - set(PROBLEMS)
    if unknown:
        raise ValueError(f"unknown benchmark problem {sorted(unknown)[0]!r}; known: {', '.join(PROBLEMS)}")
    return {k: v for k, v in table.items() if not names or k in names}


def _peak_child(config: str, mode: str, out: str) -> None:
    """In a fresh process (see :func:`peak_memory`): build the problem of ``config``, then 30
    raw forward+backward passes (``raw``) or the stored run into ``out`` (``run``); print
    the peak resident memory in bytes: VmHWM, which starts afresh with the new program
    (getrusage's ru_maxrss does not: it keeps the forking parent's resident size)."""
    cfg = RunConfig.from_json(config)
    if mode == "raw":
        once = _raw_pass(build(cfg))
        for _ in range(30):
            once()
    else:
        run(cfg, out, progress=False)
    try:
        with open("/proc/self/status") as f:
            print(next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:")))
    except OSError:  # not Linux: macOS's ru_maxrss, in bytes there (the parent's size not inherited)
        import resource

        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_memory(cfg: RunConfig, repeats: int = 1) -> dict[str, float]:
    """Peak resident memory of a stored run over that of a process that only makes raw
    forward+backward passes of the same module on the same data (both fresh processes,
    same imports): ``raw_peak_mb``, ``run_peak_mb`` (medians over ``repeats`` pairs),
    ``peak_over_raw`` (their ratio), and the lowest and highest pair's ratio. A run's peak
    varies by a few percent between identical runs (glibc's heap, and memory released on
    a clock: gflow.limits.ReleaseFreedMemory). The raw process runs on torch's default
    allocator (``THP_MEM_ALLOC_ENABLE=0``), as a plain torch script would; the run on gflow's
    choice (gflow/allocator.py) unless the caller's environment sets the variable."""
    import subprocess
    import sys

    code = "import sys; from gflow.bench import _peak_child; _peak_child(*sys.argv[1:])"
    peaks: dict[str, list[float]] = {"raw": [], "run": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(repeats):
            for mode in ("raw", "run"):
                env = {**os.environ, allocator.VARIABLE: "0"} if mode == "raw" else None
                done = subprocess.run([sys.executable, "-c", code, cfg.to_json(), mode, str(Path(tmp) / f"run{k}.h5")],
                                      capture_output=True, text=True, check=True, env=env)
                peaks[mode].append(int(done.stdout.split()[-1]) / 2**20)
    raw_peak, run_peak = float(np.median(peaks["raw"])), float(np.median(peaks["run"]))
    ratios = [b / a for a, b in zip(peaks["raw"], peaks["run"])]
    return {"raw_peak_mb": raw_peak, "run_peak_mb": run_peak, "peak_over_raw": run_peak / raw_peak,
            "peak_over_raw_min": min(ratios), "peak_over_raw_max": max(ratios)}
