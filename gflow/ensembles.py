"""Ensembles: K runs that differ only in their initialisation (config ``ensemble = K``).

The paper's findings are averages over initialisations: the mean predictor, the
fluctuations delta F over seeds. An ensemble of ``K`` members is the config run with seeds
``seed, seed + 1, ..., seed + K - 1`` and everything else equal, into a directory: one
ordinary trajectory file per member (its seed in its config) and the sweep manifest
(``gflow-sweep.json``) recording every member. So ``gflow show``, ``query``, ``plot``,
``t1``, ``compare``, the catalog and its seed averages (:func:`gflow.ensemble`) read an
ensemble as they read a sweep over ``seed``, and re-running or resuming the directory does
only what is missing: finished members are kept, killed or stopped ones resumed, failed
ones redone.

With ``ensemble_eval = "vmap"`` (and by default on a GPU) the members are integrated
together: each by its own thread with its own step sizes, error control and stop events,
their evaluations batched into one vectorised call per round (:mod:`gflow.batching`). On a
CPU by default (where the vectorised evaluation measured no faster), with ``"sequential"``,
and for what cannot batch (:func:`one_by_one` says why: the paper's steppers, whose point is
bitwise reproduction of the original code, which a batched evaluation's rounding would
break; the external solvers CVODE, torchdiffeq and torchode; the central and modified flows;
linearised models) the members run one after another in the calling process, each bitwise
as a single run. Either way a member that fails does not stop the others.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from .batching import Batch
from .config import RunConfig
from .errors import ConfigError, GflowError
from .flow import available_device
from .manifest import Manifest
from .references import check_trusted
from .run import Interrupted, SignalStop
from .store import TrajectoryFile
from .sweep import Sweep, run_one
from .threads import ENV as THREADS_ENV
from .threads import threads_env, torch_threads

BATCHED_SOLVERS = ("exponential", "chebyshev", "gd", "heavy-ball")
"""Methods whose members are integrated together: gflow's own steppers, the paper's excepted."""

OnMember = Callable[[dict[str, str]], None]


def one_by_one(cfg: RunConfig) -> str | None:
    """Why the members of ``cfg`` are integrated one after another; None when they are
    integrated together (:mod:`gflow.batching`)."""
    if cfg.ensemble_eval == "sequential":
        return "ensemble_eval = sequential"
    if cfg.ensemble_eval == "auto" and not cfg.device.startswith("cuda"):
        return "on a CPU a vectorised evaluation measured no faster (ensemble_eval = vmap to integrate them together)"
    if cfg.solver not in BATCHED_SOLVERS:
        return f"solver {cfg.solver!r} integrates one network at a time (batched: {', '.join(BATCHED_SOLVERS)})"
    if cfg.flow in ("central", "modified"):
        return f"the {cfg.flow} flow is integrated one network at a time"
    if cfg.linearized:
        return "a linearised model is integrated one network at a time"
    return None


def members(cfg: RunConfig) -> Sweep:
    """The ensemble as a sweep over seed: the config with ``ensemble = 1`` and the seeds."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "ensemble")}
    return Sweep(base=fields, grid={"seed": list(range(cfg.seed, cfg.seed + cfg.ensemble))})


def run_ensemble(cfg: RunConfig, out: str | Path, *, on_member: OnMember | None = None,
                 on_start: Callable[[], None] | None = None) -> list[dict[str, str]]:
    """Integrate every member of the ensemble ``cfg`` that is not finished into the directory
    ``out`` (created if absent) and return one result per member (name, action, status,
    reason), as :func:`gflow.run_sweep` does; ``on_member`` sees each as it ends, and
    ``on_start`` is called once the ensemble is accepted (its device, its directory), before
    any member is built (the CLI's header: not printed above an error).

    The network must come from the config (gflow's own, or a factory reference), since each
    member is built from its own seed; likewise the data and loss (a sweep's rule)."""
    if cfg.ensemble < 2:
        raise ConfigError("ensemble", cfg.ensemble, "an ensemble has at least 2 members; run a single config with run()")
    available_device(cfg.device)  # every member's: one error, before the directory is made
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GflowError(f"ensemble output {out} exists and is not a directory: an ensemble writes one file per member")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GflowError(f"cannot create the ensemble directory {out}: {e.strerror}") from None
    sweep = members(cfg)
    runs = sweep.runs()
    planned = {sweep.name(member): member for member in runs}
    recorded = Manifest(out).read()
    defaults = RunConfig().to_dict()
    Manifest(out).update({name: {"state": "planned", "reason": "", "config": {
        k: v for k, v in member.to_dict().items() if v != defaults[k]}}
        for name, member in planned.items() if name not in recorded})
    if on_start is not None:
        on_start()
    return _run_members([(name, member, out / f"{name}.h5") for name, member in planned.items()], on_member)


def _run_members(members: list[tuple[str, RunConfig, Path]], on_member: OnMember | None) -> list[dict[str, str]]:
    """Bring each member to an end state (:func:`gflow.sweep.run_one`), in the order of
    their seeds: together, one thread per member around one :class:`~gflow.batching.Batch`
    with the member's place in that order as its slot (so that running and resuming a
    directory put every member in the same slot of a batch of the same size), or one after
    another."""
    members = sorted(members, key=lambda m: (m[1].seed, m[0]))

    def report(result: dict[str, str]) -> dict[str, str]:
        if on_member is not None:
            on_member(result)
        return result

    if any(one_by_one(cfg) for _, cfg, _ in members):
        # One thread count for every member, chosen before the first, as for members
        # integrated together: the members round alike, and the earlier members' load cannot
        # hold the later ones to fewer threads (before this and gflow.threads.OwnLoad, 8
        # members at h = 300 on 2 idle cores took [2, 2, 1, 1, 1, 1, 1, 1] threads and 53.7 s,
        # against 35.7 s on 2).
        with torch_threads(_threads(members)) as threads, threads_env(threads):
            return [report(run_one(cfg.to_json(), str(path))) for _, cfg, path in members]
    results: dict[str, dict[str, str]] = {}
    batch = Batch(len(members))
    lock = threading.Lock()

    def member(slot: int, name: str, cfg: RunConfig, path: Path) -> None:
        with batch.serving(slot):
            try:
                result = run_one(cfg.to_json(), str(path))
            except Interrupted as e:  # stopped cleanly at a signal the main thread heard
                result = {"name": name, "action": "run", "status": "stopped", "reason": f"interrupted ({e.signame})"}
        with lock:
            results[name] = report(result)

    signals = SignalStop()
    # Every member's run sets torch's (process-wide) thread count: to one number, chosen here.
    with torch_threads(_threads(members)) as threads, threads_env(threads), signals.installed():
        workers = [threading.Thread(target=member, args=(slot, *m), name=f"gflow member {m[0]}", daemon=True)
                   for slot, m in enumerate(members)]
        for worker in workers:
            worker.start()
        for worker in workers:
            while worker.is_alive():  # a timed join: the main thread stays free to take a signal
                worker.join(0.2)
    if signals.signame:
        raise Interrupted(signals.signame)
    return [results[name] for name, _, _ in members]


def _threads(members: list[tuple[str, RunConfig, Path]]) -> int | None:
    """The torch threads of an ensemble's members: their config's, else those the first
    member file already there was created with (a resumed ensemble's batched products round
    as they did before: :attr:`TrajectoryFile.threads`), else None (the default, chosen
    once for all of them)."""
    if members[0][1].threads:
        return members[0][1].threads
    for _, _, path in members:
        if path.is_file():
            try:
                return TrajectoryFile(path).threads
            except GflowError:  # a damaged member is the member's own failure, reported as it runs
                continue
    return None


def run_group(group: tuple[tuple[str, str], ...], threads: int | None = None) -> list[dict[str, str]]:
    """A sweep's task (:func:`gflow.sweep.run_sweep`): its runs, given as (config JSON, file
    path), brought to an end state together where their configs allow (members of one
    ensemble), else one by one; never raises. Each result names its task's first file
    (``group``). ``threads``: this worker's share of the cores."""
    if threads:
        os.environ[THREADS_ENV] = str(threads)
    members = [(Path(path).stem, RunConfig.from_json(cfg_json), Path(path)) for cfg_json, path in group]
    try:
        results = _run_members(members, None)
    except Interrupted as e:  # the worker was signalled: its members stopped cleanly
        results = [{"name": name, "action": "run", "status": "stopped", "reason": f"interrupted ({e.signame})"}
                   for name, _, _ in members]
    return [{**r, "group": group[0][1]} for r in results]


def resume_ensemble(directory: str | Path, *, on_member: OnMember | None = None,
                    trust_code: bool = False) -> list[dict[str, str]]:
    """Bring every member an ensemble directory records (its manifest) to an end state:
    finished ones are kept, killed or stopped ones resumed, failed or never-started ones run.
    A member whose config names code (a model, data or loss reference) is run only with
    ``trust_code=True`` (``--trust-code``): the manifest is a file; one UntrustedCode error
    names every reference before anything runs."""
    directory = Path(directory)
    entries = Manifest(directory).read()
    if not entries:
        raise GflowError(f"{directory}: not a file (a trajectory is one HDF5 file), nor an ensemble directory (no "
                         f"{Manifest(directory).path.name} recording its members)")
    unreadable, members = [], []
    for name, entry in sorted(entries.items()):
        try:
            members.append((name, RunConfig.from_dict(entry.get("config", {}), f"{directory} manifest entry {name}"),
                            directory / f"{name}.h5"))
        except GflowError as e:
            unreadable.append({"name": name, "action": "error", "status": "failed", "reason": str(e)})
    # The configs come from the directory's manifest, a file: the code they name runs only on
    # the caller's word, as for a trajectory file (gflow.references.check_trusted).
    named = sorted({(field, getattr(cfg, field), json.dumps(getattr(cfg, f"{field}_args", None), sort_keys=True))
                    for _, cfg, _ in members for field in ("model", "data", "loss")
                    if getattr(cfg, field) is not None and ":" in getattr(cfg, field)})
    check_trusted([(field, ref, json.loads(args)) for field, ref, args in named], Manifest(directory).path, trust_code)
    return unreadable + _run_members(members, on_member)
