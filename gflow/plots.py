"""The paper's figures from a directory of runs (Geiger, Spigler, Jacot, Wyart 2019).

Each function draws on a fresh figure and returns it; ``plot(DIR, kind, out)`` saves one.
The x axis of the collapse plots is sqrt(h) alpha, the scale that separates lazy
(large) from feature (small) training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .catalog import catalog, ensemble, fluctuation_exponents
from .errors import GflowError
from .store import TrajectoryFile

KINDS = ("test-error", "kernel-change", "learning-curves", "phase", "ensemble")


def _figure(ncols: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.0), squeeze=False)


def _finished(table: pd.DataFrame) -> pd.DataFrame:
    done = table[table["status"] == "finished"].copy()
    if done.empty:
        raise GflowError("no finished runs to plot")
    done["scale"] = np.sqrt(done["width"]) * done["alpha"]
    return done


def _per_width(ax, table: pd.DataFrame, column: str) -> None:
    """Mean over seeds of ``column`` against sqrt(h) alpha, one line per width."""
    for width, group in table.groupby("width"):
        mean = group.groupby("scale")[column].mean()
        ax.plot(mean.index, mean.to_numpy(), "o-", label=f"h = {width}")
    ax.set_xscale("log")
    ax.set_xlabel(r"$\sqrt{h}\,\alpha$")
    ax.legend(fontsize=8)


def test_error_figure(directory: str | Path):
    """Test error vs sqrt(h) alpha, one line per h: feature (left) vs lazy (right) performance."""
    fig, axes = _figure()
    _per_width(axes[0, 0], _finished(catalog(directory)), "test_err")
    axes[0, 0].set_ylabel("test error")
    axes[0, 0].set_title("test error vs the lazy/feature scale")
    return fig


def kernel_change_figure(directory: str | Path):
    """||Theta(T) - Theta(0)|| / ||Theta(0)|| vs sqrt(h) alpha: the curves for all h collapse."""
    table = _finished(catalog(directory)).dropna(subset=["kernel_change"])
    if table.empty:
        raise GflowError("no run has kernel snapshots: run the sweep with kernel_n > 0")
    fig, axes = _figure()
    _per_width(axes[0, 0], table, "kernel_change")
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_ylabel(r"$\|\Theta(T)-\Theta(0)\|_F / \|\Theta(0)\|_F$")
    axes[0, 0].set_title("kernel change")
    return fig


def learning_curves_figure(directory: str | Path):
    """Test error vs t, and vs t / (sqrt(h) alpha), one curve per run (seed 0 only)."""
    table = _finished(catalog(directory))
    table = table[table["seed"] == table["seed"].min()]
    fig, axes = _figure(2)
    cmap = _colormap()
    scales = np.log10(table["scale"].to_numpy())
    lo, hi = scales.min(), max(scales.max(), scales.min() + 1e-9)
    for (_, row), s in zip(table.iterrows(), scales):
        saves = TrajectoryFile(Path(directory) / row["file"]).saves
        saves = saves[saves["t"] > 0]
        color = cmap((s - lo) / (hi - lo))
        axes[0, 0].plot(saves["t"], saves["test_err"], color=color, lw=1)
        axes[0, 1].plot(saves["t"] / row["scale"], saves["test_err"], color=color, lw=1)
    for ax, label in zip(axes[0], ("t", r"$t / (\sqrt{h}\,\alpha)$")):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test error")
    axes[0, 0].set_title(rf"colour: $\log_{{10}}\sqrt{{h}}\alpha$ from {lo:.1f} to {hi:.1f}", fontsize=9)
    return fig


def phase_figure(directory: str | Path):
    """The (h, alpha) plane coloured by final test error, with the line alpha* = 1/sqrt(h)."""
    table = _finished(catalog(directory))
    mean = table.groupby(["width", "alpha"])["test_err"].mean().reset_index()
    fig, axes = _figure()
    ax = axes[0, 0]
    points = ax.scatter(mean["width"], mean["alpha"], c=mean["test_err"], cmap="viridis", s=80)
    fig.colorbar(points, ax=ax, label="test error")
    h = np.geomspace(mean["width"].min(), mean["width"].max(), 50)
    ax.plot(h, 1 / np.sqrt(h), "k--", label=r"$\alpha^* = 1/\sqrt{h}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("width h")
    ax.set_ylabel(r"$\alpha$")
    ax.legend(fontsize=8)
    ax.set_title("feature (below) and lazy (above) training")
    return fig


def ensemble_figure(directory: str | Path):
    """Test error of the mean predictor and fluctuations delta_F vs h, one line per alpha."""
    ens = ensemble(directory)
    exponents = fluctuation_exponents(ens).set_index("alpha")["delta_F_exponent"]
    fig, axes = _figure(2)
    for alpha, group in ens.groupby("alpha"):
        group = group.sort_values("width")
        axes[0, 0].plot(group["width"], group["ensemble_test_err"], "o-", label=rf"$\alpha$ = {alpha:g}")
        axes[0, 1].plot(group["width"], group["delta_F"], "o-",
                        label=rf"$\alpha$ = {alpha:g}, slope {exponents[alpha]:.2f}")
    axes[0, 0].set_ylabel("test error of the mean predictor")
    axes[0, 1].set_ylabel(r"$\delta F$ (RMS over seeds)")
    axes[0, 1].set_yscale("log")
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel("width h")
        ax.legend(fontsize=8)
    return fig


_DRAW: dict[str, Callable] = {
    "test-error": test_error_figure, "kernel-change": kernel_change_figure,
    "learning-curves": learning_curves_figure,
    "phase": phase_figure, "ensemble": ensemble_figure,
}


FORMATS = ("png", "pdf", "svg", "eps", "jpg")


def figure_path(out: str | Path) -> Path:
    """Where a figure named ``out`` goes: ``out`` with a known suffix, or ``out.png`` when it has
    none; one GflowError for an unknown suffix or a missing directory."""
    out = Path(out)
    if not out.suffix:
        out = out.with_name(out.name + ".png")
    if out.suffix[1:].lower() not in FORMATS:
        raise GflowError(f"figure {out}: unknown format {out.suffix!r}; use one of {', '.join('.' + f for f in FORMATS)}")
    if not out.parent.is_dir():
        raise GflowError(f"figure {out}: directory {out.parent} does not exist")
    if out.is_dir():
        raise GflowError(f"figure {out}: is a directory")
    return out


def plot(directory: str | Path, kind: str, out: str | Path) -> Path:
    """Draw the figure ``kind`` (one of KINDS) for the runs in ``directory`` into ``out`` (PNG,
    PDF, SVG... by its suffix; ``.png`` added when it has none); returns the path written."""
    if kind not in _DRAW:
        raise GflowError(f"kind = {kind!r}: must be one of {', '.join(KINDS)}")
    out = figure_path(out)
    fig = _DRAW[kind](directory)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out


def _colormap():
    import matplotlib

    return matplotlib.colormaps["viridis"]
