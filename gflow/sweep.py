"""Sweeps: a grid of runs over RunConfig fields, run on local processes or Dask.

A sweep file is TOML::

    [base]                       # RunConfig fields shared by every run
    ptr = 500
    solver = "momentum"

    [grid]                       # RunConfig fields to vary: the runs are the product
    alpha = { log = [0.01, 100.0, 5] }     # 5 log-spaced values
    width = [50, 100]
    seed = { range = [0, 3] }              # 0, 1, 2
    model_args.depth = [2, 4]              # one keyword argument of a model factory

Each run goes to ``DIR/<name>.h5`` with a deterministic name (the grid values, with any
character other than letters, digits and ``._=+-`` replaced and each value cut to
NAME_VALUE_CHARS, and a hash of the whole config, which keeps cut names apart), so running
a sweep again does only what is missing: finished files are skipped, killed or stopped ones
resumed, failed ones redone. A run another live process holds (a second sweep on the same
directory) is left to it. The manifest ``DIR/gflow-sweep.json`` (:mod:`gflow.manifest`)
records every run, also one that failed before its file existed or whose worker process
died (``lost``); a local worker that dies does not end the sweep: the runs it had not
started go to a fresh pool of workers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ._toml import read_toml
from .config import RunConfig
from .errors import GflowError, OutputExists, RunBusy
from .manifest import Manifest
from .threads import ENV as THREADS_ENV

# Batch systems dask-jobqueue submits workers to (``--engine slurm`` ...): the class of each.
JOBQUEUES = {"slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster"}
ENGINES = ("local", "dask", *JOBQUEUES)
MAX_RUNS = 100_000  # runs in one sweep, checked before the grid is expanded
NAME_VALUE_CHARS = 40  # of each grid value in a run's file name
SCHEDULER_TIMEOUT_S = 10.0  # to reach a Dask scheduler given by --scheduler
POOL_RESTARTS = 3  # fresh local worker pools after workers died, per sweep


@dataclass(frozen=True)
class Sweep:
    """A base config and a grid of values per field; ``runs()`` is their product."""

    base: dict[str, Any]
    grid: dict[str, list[Any]]

    @classmethod
    def load(cls, path: str | Path) -> Sweep:
        data = read_toml(path, "sweep")
        unknown = sorted(set(data) - {"base", "grid"})
        if unknown:
            raise GflowError(f"sweep {path}: unknown table [{unknown[0]}]; allowed: [base], [grid]")
        grid = {k: _values(k, v, str(path)) for k, v in _flat_grid(data.get("grid", {})).items()}
        sweep = cls(dict(data.get("base", {})), grid)
        sweep.runs()  # validate every run now: no run starts when one of them is bad
        return sweep

    def runs(self) -> list[RunConfig]:
        """Every config of the grid, in a fixed order (the grid's order, last field fastest)."""
        base = RunConfig.from_dict(self.base, "sweep [base]")
        overlap = sorted(set(self.base) & set(self.grid))
        if overlap:
            raise GflowError(f"sweep: field {overlap[0]!r} is in both [base] and [grid]")
        keys = list(self.grid)
        total = math.prod(len(v) for v in self.grid.values())
        if total > MAX_RUNS:
            sizes = " x ".join(str(len(v)) for v in self.grid.values())
            raise GflowError(f"sweep: the grid expands to {total} runs ({sizes}); at most {MAX_RUNS} runs a sweep")
        base_fields = base.to_dict()
        for key in keys:
            field, _, argument = key.partition(".")
            if argument and field not in ARGUMENT_FIELDS:
                raise GflowError(f"sweep [grid] {key!r}: only {' and '.join(ARGUMENT_FIELDS)} take per-argument keys")
        runs = [RunConfig.from_dict(_point(base_fields, dict(zip(keys, combo))), "sweep [grid]")
                for combo in itertools.product(*self.grid.values())]
        if any(cfg.ensemble != 1 for cfg in runs):
            raise GflowError("sweep: a sweep's ensembles are its seeds: put seed = [...] in [grid] (ensemble must stay 1)")
        if not runs:
            raise GflowError("sweep: the grid expands to no runs")
        return runs

    def name(self, cfg: RunConfig) -> str:
        """A file name that says which grid point it is and changes with anything else in the
        config: safe characters only (no path separators), each value at most
        NAME_VALUE_CHARS long, the config's digest keeping names apart."""
        digest = hashlib.sha256(cfg.to_json().encode()).hexdigest()[:8]
        parts = [_safe(f"{k}={_short(_lookup(cfg, k))}") for k in self.grid]
        return "_".join([*parts, digest])


# RunConfig fields whose keyword arguments a grid may vary one by one: "model_args.width".
ARGUMENT_FIELDS = ("model_args", "data_args")


def _flat_grid(grid: dict[str, Any]) -> dict[str, Any]:
    """The grid with ``model_args = {width = [...]}`` (or the dotted key ``model_args.width``,
    which TOML reads as that table) spelled ``"model_args.width"``."""
    flat = {}
    for key, spec in grid.items():
        if key in ARGUMENT_FIELDS and isinstance(spec, dict):
            flat.update({f"{key}.{argument}": values for argument, values in spec.items()})
        else:
            flat[key] = spec
    return flat


def _point(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The fields of one grid point: ``base`` with ``values`` set (per-argument keys merged)."""
    fields = dict(base)
    for key, value in values.items():
        field, _, argument = key.partition(".")
        if argument:
            fields[field] = {**fields[field], argument: value}
        else:
            fields[field] = value
    return fields


def _lookup(cfg: RunConfig, key: str) -> Any:
    field, _, argument = key.partition(".")
    value = getattr(cfg, field)
    return value[argument] if argument else value


def _values(field: str, spec: Any, source: str) -> list[Any]:
    """A grid entry: a list, or {log = [lo, hi, n]}, {lin = [lo, hi, n]} (rounded to integers when
    both ends are integers), {range = [start, stop(, step)]}."""
    if isinstance(spec, list):
        if not spec:
            raise GflowError(f"{source}: [grid] {field} is an empty list")
        repeated = [json.dumps(v) for v in spec]
        if len(set(repeated)) != len(repeated):
            raise GflowError(f"{source}: [grid] {field} = {spec!r} lists a value twice (each run would be done once)")
        return spec
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, args), = spec.items()
        if kind in ("log", "lin") and isinstance(args, list) and len(args) == 3 and isinstance(args[2], int):
            lo, hi, n = args
            if n < 1:
                raise GflowError(f"{source}: [grid] {field} = {spec!r}: needs n >= 1 values")
            if n > MAX_RUNS:
                raise GflowError(f"{source}: [grid] {field} = {spec!r}: at most {MAX_RUNS} values")
            if kind == "log" and not (lo > 0 and hi > 0):
                raise GflowError(f"{source}: [grid] {field} log range needs positive ends, got {lo}, {hi}")
            values = np.geomspace(lo, hi, n) if kind == "log" else np.linspace(lo, hi, n)
            if isinstance(lo, int) and isinstance(hi, int):  # integer ends (widths, sizes): rounded integers
                return sorted({int(round(v)) for v in values})
            return [float(f"{v:.12g}") for v in values]
        if kind == "range" and isinstance(args, list) and 2 <= len(args) <= 3 and all(isinstance(a, int) for a in args):
            if len(args) == 3 and args[2] == 0:
                raise GflowError(f"{source}: [grid] {field} = {spec!r}: the step of a range must not be 0")
            if not range(*args):
                raise GflowError(f"{source}: [grid] {field} = {spec!r} is an empty range")
            if len(range(*args)) > MAX_RUNS:
                raise GflowError(f"{source}: [grid] {field} = {spec!r} has {len(range(*args))} values; "
                                 f"at most {MAX_RUNS}")
            return list(range(*args))
    raise GflowError(
        f"{source}: [grid] {field} = {spec!r}: must be a list, {{log = [lo, hi, n]}}, {{lin = [lo, hi, n]}} "
        "or {range = [start, stop, step]}"
    )


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", part)[: NAME_VALUE_CHARS + 24].lstrip(".") or "_"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    return str(value)


def run_one(cfg_json: str, path: str, threads: int | None = None) -> dict[str, str]:
    """Bring one run of a sweep to an end state and report it; never raises (a failing run
    must not stop the others). Writes ``<path minus .h5>.log`` and the run's manifest entry
    (``running``, then its end state)."""
    from .run import resume, run
    from .store import TrajectoryFile

    if threads:  # this worker's share of the cores, for runs whose config leaves threads unset
        os.environ[THREADS_ENV] = str(threads)
    out = Path(path)
    if _ORPHANED.is_set():  # the sweep died while this worker was between runs: take no new one
        return {"name": out.stem, "action": "skip", "status": "stopped", "reason": "the sweep's process died"}
    _record(out, {"state": "running", "reason": "", "pid": os.getpid()})
    try:
        log = _run_logger(out)
    except OSError as e:
        result = {"name": out.stem, "action": "error", "status": "failed",
                  "reason": f"cannot write the log {out.with_suffix('.log')}: {e.strerror}"}
        _record(out, {"state": "failed", "reason": result["reason"]})
        return result
    cfg = RunConfig.from_json(cfg_json)
    try:
        action = _action(out, cfg)
        log.info("%s %s", action, out.name)
        if action == "skip":
            traj = TrajectoryFile(out)
        elif action == "resume":
            traj = resume(out, progress=False, trust_code=True)  # _action checked: the sweep's own config
        else:
            if out.exists():
                _set_aside(out, cfg)
            traj = run(cfg, out, progress=False)  # created with O_EXCL: one process wins a race
        if action != "skip":
            log.info("integrated by process %d", os.getpid())
        result = {"name": out.stem, "action": action, "status": traj.status, "reason": traj.stop_reason}
    except (RunBusy, OutputExists) as e:  # another process claimed it first
        result = {"name": out.stem, "action": "busy", "status": "running", "reason": str(e)}
    except Exception as e:  # recorded and reported: one run's failure is not the sweep's
        log.error("%s", traceback.format_exc())
        result = {"name": out.stem, "action": "error", "status": "failed", "reason": f"{type(e).__name__}: {e}"}
    log.info("%s: %s (%s)", result["status"], result["name"], result["reason"])
    for handler in list(log.handlers):
        handler.close()
        handler.stream.close()
        log.removeHandler(handler)
    if result["action"] != "busy":  # a run another process holds is that process's to record
        _record(out, {"state": result["status"], "reason": result["reason"]})
    return result


def _record(out: Path, fields: dict[str, Any]) -> None:
    """Best effort: a manifest that cannot be written must not fail the run (the sweep's
    process checked at its start that the directory is writable)."""
    try:
        Manifest(out.parent).update({out.stem: fields})
    except GflowError:
        pass


def _action(out: Path, cfg: RunConfig) -> str:
    """skip a finished run, resume a killed or stopped one, (re)do a failed, missing or unreadable one."""
    from .store import TrajectoryFile

    if not out.exists():
        return "run"
    try:
        traj = TrajectoryFile(out)
    except GflowError:
        return "run"
    if traj.config != cfg and traj.config.replace(max_steps=cfg.max_steps, max_wall=cfg.max_wall) != cfg:
        raise GflowError(f"{out} holds a run of another config; move it away or use another directory")
    if traj.status == "finished":
        return "skip"
    if traj.status in ("running", "stopped") and traj.has("saves/state") and len(traj) > 0:
        return "resume"
    return "run"


def _set_aside(out: Path, cfg: RunConfig) -> None:
    """Move a failed or unreadable run to ``<name>.h5.failed`` (kept for inspection), under
    the run's lock and after checking again, so a live or just-finished run is never moved."""
    from .store import RunLock

    lock = RunLock(out)
    try:
        if out.exists() and _action(out, cfg) == "run":
            os.replace(out, out.with_suffix(".h5.failed"))
    finally:
        lock.release()


def _run_logger(out: Path) -> logging.Logger:
    """The run's log, appended to ``<name>.log``, never through a link planted at that name."""
    log = logging.getLogger(f"gflow.sweep.{out}")
    log.setLevel(logging.INFO)
    log.propagate = False
    fd = os.open(out.with_suffix(".log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    handler = logging.StreamHandler(os.fdopen(fd, "a"))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log


@dataclass(frozen=True)
class Jobs:
    """The batch jobs a sweep asks a cluster's scheduler for (SLURM, PBS, SGE, LSF through
    dask-jobqueue): ``jobs`` jobs of ``cores`` cores each, every core one single-threaded
    Dask worker process (one run at a time), ``memory`` per job, ``walltime`` (HH:MM:SS),
    an optional ``queue`` (partition) and ``account``, and extra scheduler directives
    (``directives``, e.g. "--gres=gpu:1"). A run outlives a job only through its file: a
    job that ends mid-run leaves it resumable, and running the sweep again resumes it."""

    jobs: int = 1
    cores: int = 1
    memory: str = "4GB"
    walltime: str = "01:00:00"
    queue: str | None = None
    account: str | None = None
    directives: tuple[str, ...] = ()

    def cluster(self, kind: str, scaled: bool = False) -> Any:
        """The dask-jobqueue cluster of these jobs on the batch system ``kind``; ``scaled``:
        with its jobs submitted."""
        if kind not in JOBQUEUES:
            raise GflowError(f"engine = {kind!r}: a batch system must be one of {', '.join(JOBQUEUES)}")
        if self.jobs < 1 or self.cores < 1:
            raise GflowError(f"jobs = {self.jobs}, cores = {self.cores}: both must be >= 1")
        try:
            import dask_jobqueue
        except ImportError:
            raise GflowError(f"--engine {kind} needs dask-jobqueue: pip install 'gflow[cluster]'") from None
        try:
            cluster = getattr(dask_jobqueue, JOBQUEUES[kind])(
                cores=self.cores, processes=self.cores, memory=self.memory, walltime=self.walltime, queue=self.queue,
                account=self.account, job_extra_directives=list(self.directives))
        except (ValueError, TypeError) as e:
            raise GflowError(f"--engine {kind}: {e}") from None
        if scaled:
            cluster.scale(jobs=self.jobs)
        return cluster


def run_sweep(
    sweep: Sweep, out: str | Path, *, engine: str = "local", workers: int | None = None,
    scheduler: str | None = None, progress: bool | None = None,
    on_result: Callable[[dict[str, str]], None] | None = None, cluster: Any = None, jobs: Jobs | None = None,
    ensembles: bool = True,
) -> list[dict[str, str]]:
    """Run every missing run of ``sweep`` into the directory ``out``, ``workers`` at a time
    (default: one per CPU core) on local processes or on Dask (a LocalCluster, or the
    cluster at ``scheduler``). Returns one result per run (name, action, status, reason);
    ``on_result`` sees each as it arrives (the CLI prints a line per run when no progress
    bar is shown).

    On a cluster with a batch system (``engine`` = "slurm", "pbs", "sge" or "lsf"), the
    sweep submits ``jobs`` (:class:`Jobs`) through dask-jobqueue, runs on their Dask
    workers and cancels them at the end; or pass any Dask ``cluster`` object you built
    (a dask-jobqueue cluster with your site's options, scaled as you like) with
    ``engine="dask"``. docs/CLUSTERS.md has the recipe.

    With ``ensembles`` (the default), grid points that differ only in ``seed`` are one task,
    integrated together as an ensemble (:mod:`gflow.ensembles`) where their config has them
    integrated together (``ensemble_eval``: vmap, or auto on a GPU); each member is still
    its own file, named as without grouping, so the directory and its catalog are the same.

    Local workers are fresh Python processes that import the caller's ``__main__``: a
    script must call ``run_sweep`` under ``if __name__ == "__main__":``, or each worker
    would start the sweep again (it is refused in one line)."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        # a local worker importing the caller's script: its run_sweep call is not guarded
        raise SystemExit(f"gflow: {UNGUARDED}")
    if engine not in ENGINES:
        raise GflowError(f"engine = {engine!r}: must be one of {', '.join(ENGINES)}")
    if scheduler and engine != "dask":
        raise GflowError("--scheduler needs --engine dask")
    if cluster is not None and (engine != "dask" or scheduler):
        raise GflowError("a cluster object needs engine='dask' and no scheduler address")
    if jobs is not None and engine not in JOBQUEUES:
        raise GflowError(f"jobs describe batch jobs: give engine = one of {', '.join(JOBQUEUES)}")
    if workers is not None and workers < 1:
        raise GflowError(f"workers = {workers}: must be >= 1")
    out = Path(out)
    runs = sweep.runs()
    remote = scheduler or cluster is not None or engine in JOBQUEUES
    if not remote:  # this machine runs them: a device it lacks is one error, before anything is made
        from .flow import available_device  # torch: not for the sweeps that run elsewhere

        for device in dict.fromkeys(cfg.device for cfg in runs):
            available_device(device)
    workers = workers or os.cpu_count() or 1
    # Each worker gets its share of the cores: torch would otherwise start one thread per
    # core in every worker and the workers would fight over them.
    # (a remote scheduler's workers have cores of their own: Dask's nanny sets their
    # OMP_NUM_THREADS, which gflow.threads honours).
    threads = None if remote else max(1, (os.cpu_count() or 1) // workers)
    if engine in JOBQUEUES:
        jobs = jobs or Jobs()
        # A bad option or a missing dask-jobqueue (or Dask, below) is one error before any job
        # is queued and before the directory is made.
        jobs.cluster(engine).close()
        submit = _dask_engine(workers, None, make=lambda: jobs.cluster(engine, scaled=True))
    elif engine == "dask":
        submit = _dask_engine(workers, scheduler, cluster)
    else:
        submit = _local_engine(workers)
    try:
        if out.exists() and not out.is_dir():
            raise GflowError(f"sweep output {out} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only place, a name too long for the file system
        raise GflowError(f"cannot create the sweep directory {out}: {e.strerror}") from None
    groups = _groups(sweep, runs, out, ensembles)
    # Every run on record before any starts; this also finds an unwritable directory now.
    defaults = RunConfig().to_dict()
    Manifest(out).update({sweep.name(cfg): {"state": "planned", "reason": "", "config": {
        k: v for k, v in cfg.to_dict().items() if v != defaults[k]}} for cfg in runs})
    results = []
    counts: Counter[str] = Counter()
    from .ensembles import run_group

    with tqdm(total=len(runs), disable=None if progress is None else not progress, unit="run") as bar:
        for group in submit(run_group, [(g, threads) for g in groups]):
            for result in group:
                results.append(result)
                if on_result is not None:
                    on_result(result)
                counts[result["status"]] += 1
            running = min(workers, len(groups) - len({r["group"] for r in results}))
            bar.set_postfix_str(", ".join([*(f"{k} {v}" for k, v in sorted(counts.items())),
                                           f"running {running} task(s)"]), refresh=False)
            bar.update(len(group))
    return sorted(({k: v for k, v in r.items() if k != "group"} for r in results), key=lambda r: r["name"])


Group = tuple[tuple[str, str], ...]  # (config JSON, file path) of each run of one task


def _groups(sweep: Sweep, runs: list[RunConfig], out: Path, ensembles: bool) -> list[Group]:
    """The sweep's tasks: with ``ensembles``, the runs that differ only in seed and that
    would be integrated together (:func:`gflow.ensembles.one_by_one`) as one task, in the
    grid's order of their first run; every other run a task of its own."""
    from .ensembles import one_by_one

    groups: dict[str, list[tuple[str, str]]] = {}
    for i, cfg in enumerate(runs):
        together = ensembles and one_by_one(cfg) is None
        key = cfg.replace(seed=0).to_json() if together else f"run {i}"
        groups.setdefault(key, []).append((cfg.to_json(), str(out / f"{sweep.name(cfg)}.h5")))
    return [tuple(g) for g in groups.values()]


Submit = Callable[[Callable[..., list[dict[str, str]]], list[tuple[Any, ...]]], Iterator[list[dict[str, str]]]]


_ORPHANED = threading.Event()  # set in a worker whose sweep process has died


def _stop_when_orphaned(parent: int, grace: float = 60.0) -> None:
    """Worker initializer: when the sweep's process dies (killed, or signalled alone by a
    job scheduler), the worker sends itself SIGTERM, so its run stops cleanly (saved,
    status ``stopped``, resumable), and exits after ``grace`` seconds rather than take
    more runs from the dead sweep's queue unsupervised."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        _ORPHANED.set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _local_engine(workers: int) -> Submit:
    def submit(fn: Callable[..., list[dict[str, str]]], tasks: list[tuple[Any, ...]]) -> Iterator[list[dict[str, str]]]:
        pending = list(tasks)
        for restart in range(POOL_RESTARTS + 1):
            broken = False
            # spawn, not fork: forking a process that has started torch's thread pools can hang
            with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=_stop_when_orphaned, initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(fn, *t): t for t in pending}
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except BrokenProcessPool:  # a worker died (SIGKILL, out of memory): the pool with it
                        broken = True
                        continue
                    pending.remove(futures[future])
                    yield result
            if not broken:
                return
            if restart == 0 and len(pending) == len(tasks) and _none_started(tasks):
                raise GflowError(f"every worker process died before it started a run; {UNGUARDED}")
            retry = []
            for group, threads in pending:  # the runs a dead worker had taken are reported; the others start afresh
                left, ended = [], []
                for member in group:
                    result = _after_a_dead_worker(Path(member[1]), last=restart == POOL_RESTARTS)
                    if result is None:
                        left.append(member)
                    else:
                        ended.append({**result, "group": member[1]})
                if ended:
                    yield ended
                if left:
                    retry.append((tuple(left), threads))
            pending = retry

    return submit


UNGUARDED = ("a script that calls run_sweep must call it under `if __name__ == \"__main__\":` (each local "
             "worker process imports the script; unguarded, it would start the sweep again)")


def _none_started(tasks: list[tuple[Any, ...]]) -> bool:
    """Whether no run of ``tasks`` (groups of runs) left its planned state (its workers died on start)."""
    paths = [Path(member[1]) for group, _ in tasks for member in group]
    try:
        entries = Manifest(paths[0].parent).read()
    except GflowError:
        return False
    return all(entries.get(p.stem, {}).get("state") == "planned" for p in paths)


def _after_a_dead_worker(out: Path, last: bool) -> dict[str, str] | None:
    """What became of a run whose result a broken worker pool never returned: None when no
    worker had taken it (and ``last`` is false: it goes to a fresh pool), else its result
    from its file and manifest entry: ``lost`` when its process died during the run."""
    from .store import TrajectoryFile

    try:
        state = Manifest(out.parent).read().get(out.stem, {}).get("state")
    except GflowError:
        state = None
    if not last and (state == "planned" or (state is None and not out.exists())):
        return None
    try:
        status = TrajectoryFile(out).status if out.exists() else None
    except GflowError:
        status = None
    if status in ("finished", "failed", "stopped"):
        reason = {"stopped": "stopped when another worker died; the sweep resumes it when run again"}.get(status, "")
        _record(out, {"state": status, "reason": reason})
        return {"name": out.stem, "action": "run", "status": status, "reason": reason}
    if state == "planned":
        reason = f"never started: worker processes kept dying ({POOL_RESTARTS} fresh pools); run the sweep again"
    else:
        reason = ("its worker process died during the run (killed, or out of memory); run the sweep again to "
                  + ("resume it" if status == "running" else "redo it"))
    _record(out, {"state": "lost", "reason": reason})
    return {"name": out.stem, "action": "lost", "status": "lost", "reason": reason}


def _dask_engine(workers: int, scheduler: str | None, given: Any = None,
                 make: Callable[[], Any] | None = None) -> Submit:
    """Dask distributed: the cluster ``given``, one ``make`` builds when the sweep starts
    (closed at its end: a batch system's jobs are cancelled with it), the scheduler at
    ``scheduler``, or a LocalCluster of ``workers`` processes (closed at the end)."""
    try:
        from dask.distributed import Client, LocalCluster
        from dask.distributed import as_completed as dask_completed
    except ImportError:
        raise GflowError("--engine dask needs Dask distributed: pip install 'gflow[dask]'") from None

    def submit(fn: Callable[..., list[dict[str, str]]], tasks: list[tuple[Any, ...]]) -> Iterator[list[dict[str, str]]]:
        if given is not None or scheduler:
            cluster, owned = given, False
        else:
            cluster, owned = make() if make else LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None), True
        try:
            try:
                client = Client(scheduler or cluster, timeout=SCHEDULER_TIMEOUT_S)
            except (OSError, TimeoutError, ValueError) as e:
                raise GflowError(f"cannot reach the Dask scheduler at {scheduler or cluster.scheduler_address} within "
                                 f"{SCHEDULER_TIMEOUT_S:g} s ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
            with client:
                futures = [client.submit(fn, *t, pure=False) for t in tasks]
                for future in dask_completed(futures):
                    yield future.result()
        finally:
            if owned:
                cluster.close()

    return submit


def summarize(results: Iterable[dict[str, str]]) -> str:
    """One line per status, then one line per run that did not finish."""
    results = list(results)
    counts = Counter(r["status"] for r in results)
    lines = [f"{len(results)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))]
    lines += [f"  {r['status']:9s} {r['name']}: {r['reason']}" for r in results if r["status"] != "finished"]
    return "\n".join(lines)
