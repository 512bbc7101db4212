"""Torch threads per run: the cost of one gradient evaluation of the default run (digits,
1000 points, FC h = 100) and of a wider one (h = 1000) with 1, 2, ... threads, on an idle
machine and on one where as many busy processes as cores compete (a sweep's other workers,
another user's job). Prints a table and writes benchmarks/results/threads.csv.

    python benchmarks/threads.py [--evals 40]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from pathlib import Path

import pandas as pd
import torch

import gflow


def _busy(stop) -> None:
    x = 0
    while not stop.is_set():
        x += 1


def _per_eval(flow: gflow.GradientFlow, evals: int) -> float:
    flow.evaluate(0.0, flow.y0)  # warm-up
    start = time.perf_counter()
    for _ in range(evals):
        flow.evaluate(0.0, flow.y0)
    return (time.perf_counter() - start) / evals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=40)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    counts = sorted({1, 2, min(4, cores), cores})
    rows = []
    for width in (100, 1000):
        flow = gflow.build(gflow.RunConfig(width=width))
        for load in ("idle", "loaded"):
            stop = multiprocessing.Event()
            hogs = [multiprocessing.Process(target=_busy, args=(stop,)) for _ in range(cores if load == "loaded" else 0)]
            for h in hogs:
                h.start()
            try:
                for threads in counts:
                    torch.set_num_threads(threads)
                    rows.append({"width": width, "machine": load, "threads": threads,
                                 "ms_per_eval": 1e3 * _per_eval(flow, args.evals)})
            finally:
                stop.set()
                for h in hogs:
                    h.join()
    table = pd.DataFrame(rows)
    base = table[table.threads == 1].set_index(["width", "machine"])["ms_per_eval"]
    table["vs_1_thread"] = [r.ms_per_eval / base[(r.width, r.machine)] for r in table.itertuples()]
    print(f"{cores} cores")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "threads.csv", index=False)
    print(f"wrote {out / 'threads.csv'}")


if __name__ == "__main__":
    main()
