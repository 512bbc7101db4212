"""Issue 27's checks of a device, as one prepared command: ``--device`` end to end (run,
resume, ensemble, kernels, Hessian, float32, the reader's commands) against the same runs
on the CPU, and what one evaluation costs at the paper's size there.

    python benchmarks/device_check.py --device cuda --out DIR [--data-dir D]   # ~5 min on one GPU
    python benchmarks/device_check.py --device cpu --quick --out DIR           # the checks' own test

Every run is a ``gflow`` command in a fresh process, as a researcher would type it; the
files are compared through the reader. The checks (a row each, printed and written to
``DIR/device_check.json``; the exit status is 1 when one fails):

- ``run``: digits, the default method with 41 saves, kernel snapshots on 50 points, the
  Hessian's top two eigenvalues at every save, on the device and on the CPU. Their f(T) (train outputs),
  last kernel and last sharpness differ by at most 3x the larger of the two runs' own
  errors against a tight run (rtol 1e-8, on the device): the device's sums round
  differently, so its steps may differ, within the method's accuracy (the issue's
  criterion for ensemble members, here for devices).
- ``resume``: the device run stopped at half its steps (``--max-steps``) and resumed is
  bit for bit the uninterrupted device run: save times, stored states, outputs, kernels,
  Hessian rows.
- ``ensemble``: three members (``--ensemble 3 --ensemble-eval vmap``) on the device: each
  member's f(T) within 3x the larger error of it and its own single device run, against
  tight runs of each seed; its evaluations within 10% of the single run's.
- ``float32``: the run in float32 on the device and on the CPU (a float32 run starts
  from its own draw of w0, not float64's rounded): f(T) within 2e-3 of each other,
  relative to the displacement (35x the spread between one and two CPU threads).
- ``commands``: ``gflow show`` and ``gflow t1`` read the device's file.
- ``timing``: one evaluation at the paper's size (Fashion-MNIST 10k points, FC L = 3
  softplus, h in {100, 300, 1000}; ``--quick``: 1000 digits, h = 30; median of 3 after a
  warm-up): eager on the device in float64 and float32 and on the CPU in float64,
  compiled on the device at h = 1000; the digits runs' wall times are in the rows above.

The device machine has no Fashion-MNIST: copy the IDX files into an ignored folder of the
checkout that travels with the command (e.g. ``.data/fashion-mnist``) and pass
``--data-dir`` there; ``benchmarks/paper_size.py --reduced --device cuda --data-dir ...``
times the paper's experiment at reduced size in the same call.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's gflow, installed or not (the device machine has it bare)

import gflow  # noqa: E402
from gflow.bench import evaluation_cost  # noqa: E402
from gflow.data import DEFAULT_DIRS  # noqa: E402
from gflow.store import TrajectoryFile  # noqa: E402

RUN = ["--saves", "41"]  # the default run with fewer saves: each instrumented save costs ~60 evaluations
QUICK = ["--ptr", "200", "--pte", "100", "--width", "30", "--t-end", "300", "--saves", "21"]
# Kernel snapshots and the Hessian's spectrum, on the runs whose files are compared whole;
# the others (tight references, the ensemble and its single runs) integrate the same flow
# without them (observers change no step).
INSTRUMENTS = ["--kernel-n", "50", "--kernel-every", "10", "--hessian-k", "2"]
TIGHT = ["--rtol", "1e-8"]
# float32 runs of one config on two CPU thread counts (other rounding) differ by 5.7e-5 in
# f(T) relative to its displacement on the default run: a device may differ by 35x that.
FLOAT32_BOUND = 2e-3
COMPARED = ("saves/f_train", "saves/f_test", "saves/state", "kernel/theta", "saves/hessian")


def gflow_command(*args: str, allowed: tuple[int, ...] = (0,)) -> tuple[float, str]:
    """Run ``gflow ARGS`` in a fresh process: (seconds, its output); raises with its stderr
    when its exit status is not ``allowed`` (a run that stops on its budget exits 1)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gflow.cli", *args], capture_output=True, text=True, env=env)
    if proc.returncode not in allowed:
        raise RuntimeError(f"gflow {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start, proc.stdout


def final_train(path: Path) -> np.ndarray:
    return TrajectoryFile(path).outputs(-1)


def error(path: Path, reference: Path) -> float:
    """||f(T) - f_ref(T)|| / ||f_ref(T) - f(0)|| on the training set."""
    ref = TrajectoryFile(reference)
    f_ref = ref.outputs(-1)
    return float(np.linalg.norm(final_train(path) - f_ref) / np.linalg.norm(f_ref - ref.outputs(0)))


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


class Checks:
    """The rows: each check is a function returning (passed, what it measured); one that
    raises fails with its message, and the others still run."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def __call__(self, name: str, check: Callable[[], tuple[bool, dict]]) -> None:
        start = time.perf_counter()
        try:
            passed, measured = check()
        except Exception as e:  # a failing check is a row, not the end of the others
            passed, measured = False, {"error": f"{type(e).__name__}: {e}"}
        row = {"check": name, "passed": bool(passed), "seconds": round(time.perf_counter() - start, 1), **measured}
        self.rows.append(row)
        print(f"{'ok  ' if passed else 'FAIL'} {name:9s} {row['seconds']:7.1f} s  "
              + ", ".join(f"{k} = {_short(v)}" for k, v in measured.items()), flush=True)


def _short(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", required=True, help="cuda, cuda:N (or cpu, to test the checks)")
    parser.add_argument("--out", required=True, help="directory of the runs and device_check.json")
    parser.add_argument("--data-dir", default=DEFAULT_DIRS["fashion-mnist"], help="Fashion-MNIST's IDX files")
    parser.add_argument("--quick", action="store_true", help="small runs and digits timing (the checks' own test)")
    args = parser.parse_args()
    out, device = Path(args.out), args.device
    out.mkdir(parents=True, exist_ok=True)
    base = QUICK if args.quick else RUN
    on = ["--device", device]
    runs: dict[str, Path] = {}

    def run(name: str, *extra: str, allowed: tuple[int, ...] = (0,), instruments: bool = False) -> Path:
        path = out / f"{name}.h5"
        seconds, _ = gflow_command("run", *base, *(INSTRUMENTS if instruments else []), *extra, "--out", str(path),
                                   "--overwrite", allowed=allowed)
        runs[name] = path
        wall[name] = seconds
        return path

    wall: dict[str, float] = {}
    checks = Checks()

    def run_check() -> tuple[bool, dict]:
        dev, cpu = run("device", *on, instruments=True), run("cpu", "--device", "cpu", instruments=True)
        tight = run("tight", *on, *TIGHT)
        errors = (error(dev, tight), error(cpu, tight))
        bound = 3 * max(errors)
        a, b = TrajectoryFile(dev), TrajectoryFile(cpu)
        measured = {"f_diff": relative(final_train(dev), final_train(cpu)), "error_device": errors[0],
                    "error_cpu": errors[1], "kernel_diff": relative(a.kernel_snapshots(last=True)[1],
                                                                    b.kernel_snapshots(last=True)[1]),
                    "sharpness_diff": relative(a.hessian_spectrum()[1][-1, :1], b.hessian_spectrum()[1][-1, :1]),
                    "evals_device": a.summary()["evals"], "evals_cpu": b.summary()["evals"],
                    "wall_device_s": wall["device"], "wall_cpu_s": wall["cpu"]}
        passed = all(measured[k] <= bound for k in ("f_diff", "kernel_diff", "sharpness_diff"))
        return passed, measured

    def made(name: str) -> Path:
        if name not in runs:
            raise RuntimeError(f"needs the {name} run of an earlier check, which failed")
        return runs[name]

    def resume_check() -> tuple[bool, dict]:
        whole = TrajectoryFile(made("device"))
        steps = int(whole.summary()["step"])
        part = run("part", *on, "--max-steps", str(steps // 2), allowed=(0, 1), instruments=True)
        if TrajectoryFile(part).status != "stopped":
            return False, {"error": f"the run stopped at {steps // 2} of {steps} steps is {TrajectoryFile(part).status}"}
        gflow_command("run", "--resume", str(part), "--max-steps", str(10**9))
        done = TrajectoryFile(part)
        same = {name: bool(np.array_equal(done.read(name), whole.read(name), equal_nan=True))
                for name in ("saves/t", *COMPARED) if whole.has(name)}
        return done.status == "finished" and all(same.values()), {
            "stopped_at_step": steps // 2, "of": steps, "bitwise": all(same.values()),
            "differing": [k for k, v in same.items() if not v] or "none"}

    def ensemble_check() -> tuple[bool, dict]:
        directory = out / "ensemble"
        shutil.rmtree(directory, ignore_errors=True)  # a directory is resumed, not overwritten
        seconds, _ = gflow_command("run", *base, *on, "--ensemble", "3", "--ensemble-eval", "vmap", "--out",
                                   str(directory))
        members = {json.loads(TrajectoryFile(p).attrs["config"])["seed"]: p for p in sorted(directory.glob("*.h5"))}
        worst, evals = 0.0, []
        for seed, path in sorted(members.items()):
            single = made("device") if seed == 0 else run(f"seed{seed}", *on, "--seed", str(seed))
            tight = made("tight") if seed == 0 else run(f"tight{seed}", *on, *TIGHT, "--seed", str(seed))
            bound = 3 * max(error(path, tight), error(single, tight))
            worst = max(worst, relative(final_train(path), final_train(single)) / bound)
            evals.append(TrajectoryFile(path).summary()["evals"] / TrajectoryFile(single).summary()["evals"])
        passed = len(members) == 3 and worst <= 1 and all(abs(r - 1) <= 0.1 for r in evals)
        return passed, {"members": len(members), "worst_diff_over_bound": worst,
                        "evals_over_single": [round(r, 3) for r in evals], "wall_s": seconds}

    def float32_check() -> tuple[bool, dict]:
        dev, cpu = run("float32", *on, "--dtype", "float32"), run("cpu32", "--device", "cpu", "--dtype", "float32")
        diff = error(dev, cpu)  # relative to the CPU run's displacement, as against a reference
        finished = all(TrajectoryFile(p).status == "finished" for p in (dev, cpu))
        return finished and diff <= FLOAT32_BOUND, {"f_diff": diff, "evals_device": TrajectoryFile(dev).summary()["evals"],
                                                     "wall_device_s": wall["float32"], "wall_cpu_s": wall["cpu32"]}

    def commands_check() -> tuple[bool, dict]:
        _, shown = gflow_command("show", str(made("device")))
        _, t1 = gflow_command("t1", str(made("device")))
        return "finished" in shown and bool(t1.strip()), {"t1": t1.strip().splitlines()[-1][:80]}

    def timing_check() -> tuple[bool, dict]:
        if args.quick:
            widths, data = [30], {"ptr": 1000, "pte": 10}
        elif Path(args.data_dir).is_dir():
            widths, data = [100, 300, 1000], {"dataset": "fashion-mnist", "data_dir": args.data_dir, "ptr": 10_000,
                                              "pte": 10, "labels": "halves"}
        else:
            return False, {"error": f"no Fashion-MNIST in {args.data_dir}: pass --data-dir"}
        # (width, dtype, compiled, where): every width eager on the device in both precisions
        # and on the CPU in float64 (the ratio); compiled on the device at the largest width
        # only (a compilation takes ~0.5-1 min). --quick compiles nothing.
        cases = [(w, d, False, device) for w in widths for d in ("float64", "float32")]
        cases += [(w, "float64", False, "cpu") for w in widths if device != "cpu"]
        cases += [] if args.quick else [(widths[-1], d, True, device) for d in ("float64", "float32")]
        measured = {}
        for width, dtype, compiled, where in cases:
            cfg = gflow.RunConfig(**data, width=width, dtype=dtype, compile=compiled, device=where)
            key = f"h{width}_{dtype}_{'compiled' if compiled else 'eager'}_{where.split(':')[0]}_ms"
            measured[key] = round(1e3 * evaluation_cost(gflow.build(cfg)), 3)
        return True, measured

    for name, check in (("run", run_check), ("resume", resume_check), ("ensemble", ensemble_check),
                        ("float32", float32_check), ("commands", commands_check), ("timing", timing_check)):
        checks(name, check)
    info = {"device": device, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda")
            and torch.cuda.is_available() else None,
            "quick": args.quick, "checks": checks.rows}
    (out / "device_check.json").write_text(json.dumps(info, indent=1, default=float) + "\n")
    failed = [r["check"] for r in checks.rows if not r["passed"]]
    print(f"wrote {out / 'device_check.json'}; " + (f"FAILED: {', '.join(failed)}" if failed else "all checks passed"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
