"""Ensemble throughput: member-runs per hour of an ensemble integrated together against the
same members run one after another (``gflow bench ensemble``).

For each width h and ensemble size K, the same config (digits, 1000 points, the default
method, ``t_end`` shortened so that the largest cases fit in minutes) is integrated

* together: ``ensemble_eval = vmap``, K threads around one batch (:mod:`gflow.batching`);
* one by one: ``ensemble_eval = sequential``, the K members in a row, each as its single
  run would be (bitwise), in the same process.

Both go through the same bookkeeping (manifest, logs, one file per member), so the ratio is
the batching's alone. Throughput is K * 3600 / wall seconds; the ratio
of the two is the speedup of batching. For K larger than ``sample`` the one-by-one time is
that of the first ``sample`` members scaled by K / sample (members cost alike: they differ
only in the seed). Before the first measurement both paths run once, so one-time costs
(imports, torch.func's first vmap, about a second) fall on neither.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from .config import RunConfig

KS = (1, 4, 16, 64)
WIDTHS = (10, 30, 100, 300)


def _members(cfg: RunConfig, how: str, directory: Path) -> tuple[float, float]:
    """(wall seconds, mean evaluations per member) of cfg's ensemble with ``ensemble_eval = how``."""
    from .catalog import catalog
    from .ensembles import _run_members, members

    sweep = members(cfg.replace(ensemble_eval=how))
    directory.mkdir()
    start = time.perf_counter()
    results = _run_members([(sweep.name(m), m, directory / f"{sweep.name(m)}.h5") for m in sweep.runs()], None)
    wall = time.perf_counter() - start
    if any(r["status"] != "finished" for r in results):
        raise RuntimeError(f"ensemble K = {cfg.ensemble}, width {cfg.width}, {how}: {results}")
    return wall, float(catalog(directory)["evals"].mean())


def ensemble_throughput(base: RunConfig = RunConfig(t_end=100.0), ks: Sequence[int] = KS,
                        widths: Sequence[int] = WIDTHS, sample: int = 16,
                        on_row: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """One row per (width, K): member-runs per hour together and one by one, their ratio,
    the wall seconds of each and the mean evaluations per member (see the module's docstring)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="gflow-bench-ensemble-") as tmp:
        scratch = Path(tmp)
        warm = base.replace(width=min(widths), t_end=min(base.t_end, 1.0), ensemble=2)
        for how in ("vmap", "sequential"):
            _members(warm, how, scratch / f"warm-{how}")
        for width in widths:
            for k in ks:
                cfg = base.replace(width=width, ensemble=k)
                together, evals = _members(cfg, "vmap", scratch / f"h{width}k{k}")
                count = min(k, sample)
                alone = _members(cfg.replace(ensemble=count), "sequential", scratch / f"h{width}k{k}-seq")[0] * k / count
                row = {"width": width, "K": k, "params": _params(cfg), "evals_per_member": evals,
                       "together_s": together, "one_by_one_s": alone, "one_by_one_measured": count,
                       "runs_per_hour_together": k * 3600 / together, "runs_per_hour_one_by_one": k * 3600 / alone,
                       "speedup": alone / together}
                rows.append(row)
                if on_row is not None:
                    on_row(row)
    return pd.DataFrame(rows)


def _params(cfg: RunConfig) -> int:
    from .flow import build

    return build(cfg.replace(ensemble=1, ptr=2, pte=0)).n_params


def markdown(table: pd.DataFrame) -> str:
    """Member-runs per hour together / one by one, and the speedup, as width x K tables."""
    def grid(column: str, fmt: str) -> str:
        pivot = table.pivot(index="width", columns="K", values=column)
        head = "| width (params) | " + " | ".join(f"K = {k}" for k in pivot.columns) + " |"
        rule = "|---" * (len(pivot.columns) + 1) + "|"
        params = table.drop_duplicates("width").set_index("width")["params"]
        body = [f"| {h} ({params[h]:,}) | " + " | ".join(format(v, fmt) for v in pivot.loc[h]) + " |"
                for h in pivot.index]
        return "\n".join([head, rule, *body])

    return "\n\n".join([
        "Speedup (member-runs per hour together / one by one):\n\n" + grid("speedup", ".2f"),
        "Member-runs per hour, together:\n\n" + grid("runs_per_hour_together", ",.0f"),
        "Member-runs per hour, one by one:\n\n" + grid("runs_per_hour_one_by_one", ",.0f"),
    ]) + "\n"


def plot(table: pd.DataFrame, path: str | Path) -> None:
    """Speedup against width, one line per K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for k, group in table.groupby("K"):
        ax.plot(group["width"], group["speedup"], "o-", label=f"K = {k}")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("width h")
    ax.set_ylabel("member-runs per hour: together / one by one")
    ax.set_title("Ensembles integrated together (vmap) vs one by one")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
