"""An ensemble's members on a multi-core CPU: one after another in one process (what
``gflow run --ensemble K`` does there, torch's threads sharing the cores inside each
evaluation) against side by side in worker processes (what ``gflow sweep`` over ``seed``
does: one run per worker, the cores split between the workers). Digits, 1000 points, the
default method, t_end = 100, K members at each width; the two ways alternate, in fresh
directories, and both include their start-up (the workers import torch). Prints a table
and writes benchmarks/results/ensemble_processes.csv.

    python benchmarks/ensemble_processes.py [--members 8] [--widths 10 100 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

import gflow
from gflow.ensembles import members


def _one_after_another(cfg: gflow.RunConfig, out: Path) -> float:
    start = time.perf_counter()
    results = gflow.run_ensemble(cfg.replace(ensemble_eval="sequential"), out)
    assert all(r["status"] == "finished" for r in results), results
    return time.perf_counter() - start


def _side_by_side(cfg: gflow.RunConfig, out: Path, workers: int) -> float:
    start = time.perf_counter()
    results = gflow.run_sweep(members(cfg), out, workers=workers, progress=False)  # the seeds as a sweep
    assert all(r["status"] == "finished" for r in results), results
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--widths", type=int, nargs="+", default=[10, 100, 300])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--t-end", type=float, default=100.0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    workers = os.cpu_count() or 1
    rows = []
    print(f"{args.members} members; side by side: {workers} workers (one per core), one run and one torch thread each")
    print(f"{'width':>6} {'repeat':>6} {'one after another s':>20} {'side by side s':>15} {'speedup':>8} {'evals':>6}")
    with tempfile.TemporaryDirectory(prefix="gflow-bench-processes-") as tmp:
        for width in args.widths:
            cfg = gflow.RunConfig(width=width, t_end=args.t_end, ensemble=args.members)
            for k in range(args.repeats):
                run = Path(tmp) / f"h{width}-{k}"
                # alternate which goes first: the machine's speed drifts within minutes
                if k % 2 == 0:
                    alone = _one_after_another(cfg, run / "sequential")
                    together = _side_by_side(cfg, run / "processes", workers)
                else:
                    together = _side_by_side(cfg, run / "processes", workers)
                    alone = _one_after_another(cfg, run / "sequential")
                a, b = gflow.catalog(run / "sequential"), gflow.catalog(run / "processes")
                evals = a.sort_values("seed")["evals"].tolist()
                assert evals == b.sort_values("seed")["evals"].tolist()  # the same integrations
                rows.append({"width": width, "members": args.members, "workers": workers, "repeat": k,
                             "one_after_another_s": alone, "side_by_side_s": together, "speedup": alone / together,
                             "evals_per_member": sum(evals) / len(evals)})
                print(f"{width:6d} {k:6d} {alone:20.2f} {together:15.2f} {alone / together:8.2f} "
                      f"{sum(evals) / len(evals):6.0f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "ensemble_processes.csv", index=False)
    print(f"wrote {out / 'ensemble_processes.csv'}")


if __name__ == "__main__":
    main()
