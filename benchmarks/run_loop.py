"""The torch threads that consecutive ``gflow run`` commands take by default (a shell loop,
the commonest way to run a few configurations by hand), and their wall times: first on an
otherwise idle machine, then (``--busy-wait S``) after one other process has kept a core
busy for S seconds, long enough for the 1-minute load average to see it. Without
``OMP_NUM_THREADS``, so that each command chooses (gflow/threads.py). Prints a table and
writes benchmarks/results/run_loop.csv.

    python benchmarks/run_loop.py [--runs 4] [--width 300] [--t-end 100] [--busy-wait 70]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from gflow.store import TrajectoryFile


def _busy(stop) -> None:
    while not stop.is_set():
        pass


def _loop(runs: int, args: list[str], directory: Path, situation: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    rows = []
    for k in range(runs):
        out = directory / f"{situation}-{k}.h5"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gflow.cli", "run", *args, "--out", str(out)], env=env, check=True,
                       capture_output=True)
        command_s = time.perf_counter() - start
        traj = TrajectoryFile(out)
        summary = traj.summary()
        rows.append({"situation": situation, "command": k + 1, "threads": traj.threads, "run_wall_s": summary["wall"],
                     "command_s": command_s, "evals": int(summary["evals"])})
        print(f"{situation:>6} {k + 1:>7} {traj.threads:>7} {summary['wall']:>10.2f} {command_s:>10.2f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--width", type=int, default=300)
    parser.add_argument("--t-end", type=float, default=100.0)
    parser.add_argument("--busy-wait", type=float, default=0.0,
                        help="then the same loop after one busy process has run this many seconds (0: skip)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    run_args = ["--width", str(args.width), "--t-end", str(args.t_end)]
    print(f"{os.cpu_count()} cores; gflow run {' '.join(run_args)}, {args.runs} commands one after another")
    print(f"{'':>6} {'command':>7} {'threads':>7} {'run s':>10} {'command s':>10}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gflow-bench-loop-") as tmp:
        rows += _loop(args.runs, run_args, Path(tmp), "idle")
        if args.busy_wait > 0:
            stop = multiprocessing.Event()
            hog = multiprocessing.Process(target=_busy, args=(stop,))
            hog.start()
            try:
                time.sleep(args.busy_wait)
                rows += _loop(args.runs, run_args, Path(tmp), "busy")
            finally:
                stop.set()
                hog.join()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "run_loop.csv", index=False)
    print(f"wrote {out / 'run_loop.csv'}")


if __name__ == "__main__":
    main()
