"""t1 across runs, and the scaling fits of seeds 000/001 (t1 ~ sqrt(h) alpha) and seed 002
(distance to the linearised dynamics ~ 1/alpha)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .config import RunConfig
from .errors import GflowError, UntrustedCode
from .geometry import check_threshold, first_crossing
from .store.listing import run_files
from .trajectory import open_trajectory


def t1_table(paths: Sequence[str | Path], eps: float = 0.1, *, trust_code: bool = False) -> pd.DataFrame:
    """One row per run: file, alpha, width (:attr:`RunConfig.network_width`: NaN for a
    model without one), seed, t1 by each estimator (inf: not reached), the kernel change at
    the last save, ``jvp`` (how the Jacobian-vector products were taken: forward, or
    reverse-over-reverse for fused kernels without a forward rule) and ``note``.

    ``paths``: trajectory files, or directories of them (a sweep's, an ensemble's: their
    ``*.h5`` files). A file named here that cannot be read is an error; one of a directory
    gets a row of NaN whose note says why, so that it does not hide the others (as in the
    catalog). The linearization and curvature estimators rebuild the network: runs made
    with factory references need ``trust_code=True`` (see :func:`gflow.open`; without it,
    UntrustedCode) and the user's code importable. Where the network cannot be rebuilt, the
    row still gives the kernel t1 from the kernel snapshots the run stored (NaN without
    them) and ``note`` says why the others are missing."""
    check_threshold(eps)
    rows = []
    for given in paths:
        listed = Path(given).is_dir()
        for path in run_files([given]):
            try:
                rows.append(_t1_row(path, eps, trust_code))
            except UntrustedCode:
                raise
            except GflowError as e:
                if not listed:
                    raise
                rows.append({**_row(path), "note": f"unreadable: {e}"})
    return pd.DataFrame(rows).astype({"seed": "Int64"})  # integers beside an unreadable run's missing seed


def _row(path: Path, cfg: RunConfig | None = None, t_end: float = math.nan) -> dict:
    """A row of :func:`t1_table` with no time scale measured yet."""
    return {"file": str(path), "alpha": cfg.alpha if cfg else math.nan, "width": cfg.network_width if cfg else math.nan,
            "seed": cfg.seed if cfg else math.nan, "t_end": t_end, "t1_linearization": math.nan,
            "t1_kernel": math.nan, "t1_curvature": math.nan, "kernel_change_end": math.nan, "jvp": "", "note": ""}


def _t1_row(path: Path, eps: float, trust_code: bool) -> dict:
    traj = open_trajectory(path, trust_code=trust_code)
    if not len(traj):
        raise GflowError(f"{path}: no saves yet: no time scale to measure")
    row = _row(path, traj.config, float(traj.save_times[-1]))
    try:
        flow = traj.flow
    except UntrustedCode:
        raise
    except GflowError as e:
        flow, row["note"] = None, f"no network ({e}): kernel t1 from the stored snapshots only"
    # the kernel change is computed once (from the stored states when the run took no
    # snapshots) for both its t1 and its final value; traj.t1("kernel") would redo it
    times, change = traj.kernel_change() if flow is not None else traj.stored_kernel_change()
    if len(change):
        row.update(t1_kernel=first_crossing(times, change, eps), kernel_change_end=float(change[-1]))
    if flow is not None:
        row.update(t1_linearization=traj.t1("linearization", eps), t1_curvature=traj.t1("curvature"),
                   jvp=flow.model.jvp.mode or "")
    return row


def power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares fit log y = a + b log x: returns (b, exp(a))."""
    b, a = np.polyfit(np.log(x), np.log(y), 1)
    return float(b), float(np.exp(a))


def weight_scaling(table: pd.DataFrame, lazy_from: float = 100.0) -> dict[str, float]:
    """The lazy regime's weight change: fit log(sqrt(h) ||w(T) - w0|| / ||w0||) =
    c_h + b log(sqrt(h) alpha) over the finished runs of a catalog with sqrt(h) alpha >=
    ``lazy_from``, one slope b for all widths and an offset c_h per width (at small h the
    input layer weighs in ||w0||, so the widths' curves are parallel but not on one line).
    Geiger et al. (and Chizat, Oyallon, Bach): the weights move by ~1/alpha in the NTK
    parametrization, so b = -1. On the digits sweep of benchmarks/weight_scaling.toml the
    slope is -1 beyond sqrt(h) alpha ~ 100 and flattens towards the crossover below it.
    Returns the exponent b, the pooled exponent (one line for all widths) and the runs."""
    done = table[(table["status"] == "finished") & np.isfinite(table["weight_change"])]
    scale = np.sqrt(done["width"].to_numpy(float)) * done["alpha"].to_numpy(float)
    lazy = scale >= lazy_from
    if lazy.sum() < 2 or len(np.unique(scale[lazy])) < 2:
        raise GflowError(f"need finished runs at two or more values of sqrt(h) alpha >= {lazy_from:g} to fit the "
                         "lazy regime's weight change")
    widths = done["width"].to_numpy(float)[lazy]
    change = np.log(np.sqrt(widths) * done["weight_change"].to_numpy(float)[lazy])
    design = np.column_stack([np.log(scale[lazy]), *((widths == h).astype(float) for h in np.unique(widths))])
    coef, *_ = np.linalg.lstsq(design, change, rcond=None)
    pooled, prefactor = power_law(scale[lazy], np.exp(change))
    return {"exponent": float(coef[0]), "pooled_exponent": pooled, "prefactor": prefactor, "runs": int(lazy.sum())}


def fit_t1(table: pd.DataFrame, column: str = "t1_linearization") -> dict[str, float]:
    """Fit log t1 = c + a log alpha + b log h over the finite t1 of a table: a, b."""
    finite = table[np.isfinite(table[column])]
    design = np.column_stack([np.ones(len(finite)), np.log(finite["alpha"]), np.log(finite["width"])])
    coef, *_ = np.linalg.lstsq(design, np.log(finite[column].to_numpy()), rcond=None)
    return {"alpha_exponent": float(coef[1]), "width_exponent": float(coef[2]), "runs": len(finite)}


def output_distance(a: str | Path, b: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(times, ||f_a(t) - f_b(t)|| / ||f_b(t) - f0||) on train at the save times two runs share,
    e.g. a network and its linearisation (``linearized = true``)."""
    ta, tb = open_trajectory(a), open_trajectory(b)
    times, ia, ib = np.intersect1d(ta.save_times, tb.save_times, return_indices=True)
    fa, fb = ta.read("saves/f_train")[ia], tb.read("saves/f_train")[ib]
    f0 = tb.read("init/f0_train")
    moved = np.linalg.norm(fb - f0, axis=1)
    return times, np.linalg.norm(fa - fb, axis=1) / np.where(moved > 0, moved, np.inf)


def t1_scaling(
    base: RunConfig, widths: Sequence[int], alphas: Sequence[float], directory: str | Path,
    eps: float = 0.1, seeds: Sequence[int] = (0,),
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Runs over widths x alphas x seeds (feature regime) and the fit of t1 ~ alpha^a h^b
    over every run (seed 000, finding (iv): a = 1, b = 1/2), with the final kernel change of
    each run. Several seeds average out the initialisation's fluctuations of t1, which are
    largest at small width."""
    from .run import run

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for h, a, seed in itertools.product(widths, alphas, seeds):
        path = directory / f"t1-h{h}-a{a:g}-s{seed}.h5"
        if not path.exists():
            run(base.replace(width=h, alpha=a, seed=seed), path, progress=False)
        paths.append(path)
    table = t1_table(paths, eps)
    table["sqrt_h_alpha"] = np.sqrt(table["width"]) * table["alpha"]
    return table, fit_t1(table)


def lazy_distance_scaling(
    base: RunConfig, alphas: Sequence[float], directory: str | Path
) -> tuple[pd.DataFrame, float]:
    """Network vs its linearisation from the same initialisation, at t = base.t_end, for each
    alpha; the fitted exponent of the distance in alpha (seed 002: -1)."""
    from .run import run

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for a in alphas:
        net, lin = directory / f"net-a{a:g}.h5", directory / f"lin-a{a:g}.h5"
        for path, linearized in ((net, False), (lin, True)):
            if not path.exists():
                run(base.replace(alpha=a, linearized=linearized), path, progress=False)
        _, distance = output_distance(net, lin)
        rows.append({"alpha": a, "distance_at_T": float(distance[-1])})
    table = pd.DataFrame(rows)
    exponent, _ = power_law(table["alpha"].to_numpy(), table["distance_at_T"].to_numpy())
    return table, exponent
