"""The paper's experiments as sweep files shipped with gflow (digits, fashion, cnn), and ``reproduce(name)``:
run the sweep, then draw every figure of ``gflow.plots`` into ``<out>/figures``."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ..errors import GflowError
from ..plots import KINDS, plot
from ..sweep import Sweep, run_sweep, summarize

NAMES = ("digits", "fashion", "cnn")


def sweep_file(name: str) -> Path:
    """The sweep TOML of experiment ``name`` (copy it to change the grid)."""
    if name not in NAMES:
        raise GflowError(f"experiment {name!r}: must be one of {', '.join(NAMES)}")
    return Path(str(files(__package__) / f"{name}.toml"))


def reproduce(name: str, out: str | Path | None = None, *, workers: int | None = None,
              engine: str = "local") -> list[Path]:
    """Run experiment ``name`` into ``out`` (default ./name; re-running finishes what is
    missing) and write its figures; returns the figure paths."""
    out = Path(out or name)
    results = run_sweep(Sweep.load(sweep_file(name)), out, engine=engine, workers=workers)
    print(summarize(results))
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    return [plot(out, kind, figures / f"{kind}.png") for kind in KINDS]
