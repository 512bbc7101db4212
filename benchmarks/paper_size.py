"""The paper's experiment at the paper's size (Geiger, Spigler, Jacot, Wyart 2019, seed 001):
Fashion-MNIST, two classes (labels 0-4 against 5-9), 10,000 training points, FC L = 3
softplus under the NTK parametrisation, soft hinge, gradient flow with the default method
(exponential Rosenbrock), trained until every training margin reaches 1, for h in
{100, 300, 1000}, alpha on the paper's grid (1e-3 to 1e3, seven values), ensembles of 8 seeds
(grouped by ``gflow sweep``: together on a GPU), kernel snapshots on 200 training points.

    python benchmarks/paper_size.py --out paper [--device cuda]      # the paper's size
    python benchmarks/paper_size.py --reduced --out paper-small      # what 2 CPU cores can do

Prints the wall time per member-run for each (h, alpha) and in all (the runs' own, so a
re-run that finds them finished reports them too), the cost of one
evaluation at the full size for each h, and an estimate of the full size's time on this
device (each h's cost per evaluation times the evaluations each member needed in this
invocation, summed over the grid: exact when this run is the full size; each evaluation
as the run makes it, compiled from h = 300 on under gflow.compilation's rule). Writes
``DIR/paper_size.json`` with the numbers and three figures: the kernel change against
sqrt(h) alpha (``kernel_change.png``), the test error against sqrt(h) alpha
(``test_error.png``), and the mean predictor's test error and the fluctuations delta F
against h (``ensemble.png``). Re-running the command on the same DIR does only what is
missing (a sweep), so a killed run resumes.

--reduced: 1,000 training points and 500 test points, h in {30, 100}, alpha in {1e-2, 1, 1e2},
4 seeds, at most t = 1e4 (a member that has not reached margin 1 by then ends ``finished`` at
t_end, and its numbers say so).

Needs the Fashion-MNIST files (``apt-get install dataset-fashion-mnist``, or ``--data-dir``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import gflow
from gflow.bench import evaluation_cost
from gflow.data import DEFAULT_DIRS
from gflow.plots import plot

FULL = {"ptr": 10_000, "pte": 2_000, "widths": [100, 300, 1000], "alphas": list(np.logspace(-3, 3, 7)), "seeds": 8,
        "t_end": 1e7}
REDUCED = {"ptr": 1_000, "pte": 500, "widths": [30, 100], "alphas": [1e-2, 1.0, 1e2], "seeds": 4, "t_end": 1e4}


def sweep_of(size: dict, device: str, data_dir: str = DEFAULT_DIRS["fashion-mnist"]) -> gflow.Sweep:
    base = {"dataset": "fashion-mnist", "data_dir": data_dir, "labels": "halves", "ptr": size["ptr"],
            "pte": size["pte"], "depth": 3, "act": "softplus", "loss": "softhinge", "stop_margin": 1.0, "t_end": size["t_end"], "saves": 40,
            "kernel_n": 200, "kernel_every": 4, "device": device}
    return gflow.Sweep(base=base, grid={"alpha": [float(a) for a in size["alphas"]], "width": size["widths"],
                                        "seed": list(range(size["seeds"]))})


def per_evaluation(size: dict, width: int, device: str,
                   data_dir: str = DEFAULT_DIRS["fashion-mnist"]) -> tuple[float, bool]:
    """Seconds of one evaluation of the run's own vector field at ``size``'s training set
    and width ``width`` (median of 3, after one that compiles where the run would:
    gflow.compilation), and whether it is compiled."""
    cfg = gflow.RunConfig(dataset="fashion-mnist", data_dir=data_dir, labels="halves", ptr=size["ptr"], pte=10,
                          depth=3, width=width, device=device)
    flow = gflow.build(cfg)
    return evaluation_cost(flow), flow.compiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory of the runs, the numbers and the figures")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--reduced", action="store_true", help="the reduced size (see the module's docstring)")
    parser.add_argument("--workers", type=int, default=1, help="ensembles at a time (default 1)")
    parser.add_argument("--data-dir", default=DEFAULT_DIRS["fashion-mnist"], help="Fashion-MNIST's IDX files")
    args = parser.parse_args()
    if not Path(args.data_dir).is_dir():
        raise SystemExit(f"paper_size: needs Fashion-MNIST in {args.data_dir} "
                         "(apt-get install dataset-fashion-mnist, or --data-dir)")
    size = REDUCED if args.reduced else FULL
    out = Path(args.out)
    sweep = sweep_of(size, args.device, args.data_dir)
    start = time.perf_counter()
    results = gflow.run_sweep(sweep, out, workers=args.workers)
    wall = time.perf_counter() - start
    table = gflow.catalog(out)
    finished = table[table["status"] == "finished"]
    # The runs' own wall times: a re-run that finds them finished still reports what they cost.
    per_run = float(table["wall"].mean())
    print(f"{len(finished)} of {len(results)} member-runs finished; {per_run:.1f} s per member-run "
          f"({'reduced' if args.reduced else 'full'} size, {args.device}); this invocation {wall:.0f} s")
    groups = finished.groupby(["width", "alpha"]).agg(members=("seed", "size"), evals=("evals", "mean"),
                                                     t=("t", "mean"), wall=("wall", "mean"),
                                                     train_err=("train_err", "mean"))
    print(groups.to_string(float_format=lambda v: f"{v:.3g}"))
    measured = {h: per_evaluation(FULL, h, args.device, args.data_dir) for h in FULL["widths"]}
    full_cost = {h: cost for h, (cost, _) in measured.items()}
    # Each full-size member needs as many evaluations as this invocation's members of the
    # nearest width and the same alpha needed (exact when this is the full size).
    evals = finished.groupby(["width", "alpha"])["evals"].mean()
    estimate = 0.0
    for h in FULL["widths"]:
        nearest = min(size["widths"], key=lambda w: abs(np.log(w / h)))
        for alpha in size["alphas"]:
            estimate += FULL["seeds"] * full_cost[h] * float(evals.get((nearest, float(alpha)), np.nan))
    estimate *= len(FULL["alphas"]) / len(size["alphas"])
    print("one evaluation at 10,000 points: " + ", ".join(
        f"h = {h}: {c:.2f} s{' (compiled)' if compiled else ''}" for h, (c, compiled) in measured.items()))
    print(f"estimated full size ({len(FULL['alphas'])} alphas x {len(FULL['widths'])} widths x {FULL['seeds']} seeds) "
          f"on {args.device}: {estimate / 3600:.1f} hours of evaluations")
    figures = {kind: str(plot(out, kind, out / f"{kind.replace('-', '_')}.png"))
               for kind in ("kernel-change", "test-error", "ensemble")}
    numbers = {"size": "reduced" if args.reduced else "full", "device": args.device, "wall_s": wall,
               "member_runs": len(results), "finished": int(len(finished)), "wall_per_member_run_s": per_run,
               "per_evaluation_full_s": full_cost, "compiled_full": {h: c for h, (_, c) in measured.items()},
               "estimated_full_hours": estimate / 3600,
               "groups": groups.reset_index().to_dict(orient="records"), "figures": figures}
    (out / "paper_size.json").write_text(json.dumps(numbers, indent=1, default=float) + "\n")
    print(f"wrote {out / 'paper_size.json'} and {', '.join(figures.values())}")


if __name__ == "__main__":
    main()
