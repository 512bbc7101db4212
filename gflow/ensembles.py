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

The members are integrated one after another in the calling process (each as a single run
would be, bitwise); a member that fails does not stop the others.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .config import RunConfig
from .errors import ConfigError, GflowError
from .manifest import Manifest
from .sweep import Sweep, run_one

def members(cfg: RunConfig) -> Sweep:
    """The ensemble as a sweep over seed: the config with ``ensemble = 1`` and the seeds."""
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "ensemble")}
    return Sweep(base=fields, grid={"seed": list(range(cfg.seed, cfg.seed + cfg.ensemble))})


def run_ensemble(cfg: RunConfig, out: str | Path, *,
                 on_member: Callable[[dict[str, str]], None] | None = None) -> list[dict[str, str]]:
    """Integrate every member of the ensemble ``cfg`` that is not finished into the directory
    ``out`` (created if absent) and return one result per member (name, action, status,
    reason), as :func:`gflow.run_sweep` does; ``on_member`` sees each as it ends.

    The network must come from the config (gflow's own, or a factory reference), since each
    member is built from its own seed; likewise the data and loss (a sweep's rule)."""
    if cfg.ensemble < 2:
        raise ConfigError("ensemble", cfg.ensemble, "an ensemble has at least 2 members; run a single config with run()")
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
    results = []
    for name, member in planned.items():
        result = run_one(member.to_json(), str(out / f"{name}.h5"))
        results.append(result)
        if on_member is not None:
            on_member(result)
    return results


def resume_ensemble(directory: str | Path, *,
                    on_member: Callable[[dict[str, str]], None] | None = None) -> list[dict[str, str]]:
    """Bring every member an ensemble directory records (its manifest) to an end state:
    finished ones are kept, killed or stopped ones resumed, failed or never-started ones run."""
    directory = Path(directory)
    entries = Manifest(directory).read()
    if not entries:
        raise GflowError(f"{directory}: not a file (a trajectory is one HDF5 file), nor an ensemble directory (no "
                         f"{Manifest(directory).path.name} recording its members)")
    results = []
    for name, entry in sorted(entries.items()):
        try:
            member = RunConfig.from_dict(entry.get("config", {}), f"{directory} manifest entry {name}")
        except GflowError as e:
            results.append({"name": name, "action": "error", "status": "failed", "reason": str(e)})
            continue
        result = run_one(member.to_json(), str(directory / f"{name}.h5"))
        results.append(result)
        if on_member is not None:
            on_member(result)
    return results
