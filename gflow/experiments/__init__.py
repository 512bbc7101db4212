"""The paper's experiments as sweep files shipped with gflow (digits, fashion, cnn), and ``reproduce(name)``:
run the sweep, then draw every figure of ``gflow.plots`` into ``<out>/figures``."""

from __future__ import annotations

from collections.abc import Callable
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
              engine: str = "local", on_result: Callable[[dict[str, str]], None] | None = None) -> list[Path]:
    """Run experiment ``name`` into ``out`` (default ./name; re-running finishes what is
    missing) and write its figures; returns the figure paths. ``on_result``: see run_sweep."""
    out = Path(out or name)
    results = run_sweep(Sweep.load(sweep_file(name)), out, engine=engine, workers=workers, on_result=on_result)
    print(summarize(results))
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    drawn = []
    for kind in KINDS:
        try:
            drawn.append(plot(out, kind, figures / f"{kind}.png"))
        except GflowError as e:  # an instrument the experiment does not record (e.g. sharpness)
            print(f"no {kind} figure: {e}")
    return drawn
