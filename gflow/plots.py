"""The paper's figures from a directory of runs (Geiger, Spigler, Jacot, Wyart 2019).

Each function draws on a fresh figure and returns it; ``plot(DIR, kind, out)`` saves one.
The x axis of the collapse plots is sqrt(h) alpha, the scale that separates lazy
(large) from feature (small) training. Runs that differ only in their seed are averaged:
lines are means over seeds, shaded bands their spread (one standard deviation), and the
number of seeds is in the legend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .catalog import catalog, ensemble, fluctuation_exponents
from .errors import FileFormatError, GflowError
from .store import TrajectoryFile

KINDS = ("test-error", "kernel-change", "learning-curves", "phase", "ensemble", "alignment", "sharpness", "weight-scaling", "layers")
_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("", "o", "s", "^", "x")
LEGEND_LAYERS = 12  # layers named in a legend; the rest counted


def _figure(ncols: int = 1, nrows: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.0 * nrows), squeeze=False, layout="constrained")


def _plain_ticks(axis, values) -> None:
    """Ticks of a log axis at ``values`` (the widths run), labelled as plain numbers (25, 50, 100)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis.set_major_locator(FixedLocator(sorted(set(values))))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _finished(table: pd.DataFrame) -> pd.DataFrame:
    """The finished runs, with ``scale`` = sqrt(h) alpha, or alpha alone when a run has no
    width (a user model without ``width_from``: :attr:`RunConfig.network_width` is NaN)."""
    done = table[table["status"] == "finished"].copy()
    if done.empty:
        raise GflowError("no finished runs to plot")
    done["scale"] = done["alpha"] if _widthless(done) else np.sqrt(done["width"]) * done["alpha"]
    return done


def _widthless(table: pd.DataFrame) -> bool:
    return bool(table["width"].isna().any())


def _scale_label(table: pd.DataFrame, log: bool = False) -> str:
    name = r"\alpha" if _widthless(table) else r"\sqrt{h}\,\alpha"
    return rf"$\log_{{10}} {name}$" if log else rf"${name}$"


def _width_label(width: float) -> str:
    return "no width h" if pd.isna(width) else f"h = {width:g}"


def _no_width_note(ax, table: pd.DataFrame) -> None:
    """Say on the figure that its runs have no width (alpha alone on the axes)."""
    if _widthless(table):
        ax.text(0.02, 0.02, "runs without a width h (set width_from): alpha alone", transform=ax.transAxes,
                fontsize=7, color="0.4")


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _per_width(ax, table: pd.DataFrame, column: str) -> None:
    """Mean over seeds of ``column`` against sqrt(h) alpha, one line per width, the spread
    over seeds (one standard deviation) shaded."""
    for (width, group), style in zip(table.groupby("width", dropna=False), _STYLES * 10):
        stats = group.groupby("scale")[column].agg(["mean", "std", "count"])
        line, = ax.plot(stats.index, stats["mean"], "o" + style,
                        label=f"{_width_label(width)} ({_seeds(int(stats['count'].max()))})")
        spread = stats["std"].fillna(0.0)
        ax.fill_between(stats.index, stats["mean"] - spread, stats["mean"] + spread, color=line.get_color(), alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel(_scale_label(table))
    ax.legend(fontsize=8)
    _no_width_note(ax, table)


def test_error_figure(directory: str | Path):
    """Test error vs sqrt(h) alpha, one line per h: feature (left) vs lazy (right) performance."""
    fig, axes = _figure()
    _per_width(axes[0, 0], _finished(catalog(directory)), "test_err")
    axes[0, 0].set_ylabel("test error")
    axes[0, 0].set_title("test error (mean and spread over seeds)")
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
    axes[0, 0].set_title("kernel change at the end of training")
    return fig


def _curves(directory: Path, files: pd.Series, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, mean, std) over the runs ``files`` of ``column`` at their save times (t > 0);
    a run that ended earlier holds its last value (its error at the end of training)."""
    tables = [TrajectoryFile(directory / name).saves for name in files]
    times = np.unique(np.concatenate([t["t"].to_numpy() for t in tables]))
    times = times[times > 0]
    values = np.array([np.interp(times, t["t"], t[column], right=t[column].iloc[-1]) for t in tables])
    return times, values.mean(axis=0), values.std(axis=0)


def learning_curves_figure(directory: str | Path):
    """Train and test error vs t and vs t / (sqrt(h) alpha), one curve per (alpha, h): the
    mean over seeds, its spread shaded. Colour: log10 sqrt(h) alpha (colour bar); line
    style: width."""
    import matplotlib

    directory = Path(directory)
    table = _finished(catalog(directory))
    fig, axes = _figure(2, 2)
    cmap = matplotlib.colormaps["viridis"]
    scales = np.log10(table["scale"].to_numpy())
    one_scale = bool(np.ptp(scales) == 0)  # a colour bar of one value means nothing: the legend says it
    norm = matplotlib.colors.Normalize(scales.min(), max(scales.max(), scales.min() + 1e-9))
    widths = list(table["width"].drop_duplicates().sort_values())
    for (alpha, width), group in table.groupby(["alpha", "width"], dropna=False):
        scale = float(group["scale"].iloc[0])
        style = _STYLES[next(i for i, w in enumerate(widths) if w == width or pd.isna(w) and pd.isna(width)) % len(_STYLES)]
        color = "C0" if one_scale else cmap(norm(np.log10(scale)))
        for row, column in enumerate(("train_err", "test_err")):
            times, mean, std = _curves(directory, group["file"], column)
            for col, x in enumerate((times, times / scale)):
                ax = axes[row, col]
                ax.plot(x, mean, style, color=color, lw=1.2)
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.12, lw=0)
    rescaled = r"$t / \alpha$" if _widthless(table) else r"$t / (\sqrt{h}\,\alpha)$"
    for row, name in enumerate(("train error", "test error")):
        for col, label in enumerate(("t", rescaled)):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.set_xlabel(label)
            ax.set_ylabel(name)
            ax.set_title(f"{name} vs {'t' if col == 0 else 'rescaled time'}", fontsize=10)
    seeds = int(table.groupby(["alpha", "width"], dropna=False).size().max())
    handles = [matplotlib.lines.Line2D([], [], color="k", ls=_STYLES[i % len(_STYLES)], label=_width_label(w))
               for i, w in enumerate(widths)]
    title = f"mean of {_seeds(seeds)}, band: std"
    if one_scale:
        title += f"\n{_scale_label(table)} = {float(table['scale'].iloc[0]):.3g}"
    axes[0, 0].legend(handles=handles, fontsize=8, title=title, title_fontsize=8)
    _no_width_note(axes[1, 0], table)
    if not one_scale:
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(),
                     label=_scale_label(table, log=True))
    return fig


def phase_figure(directory: str | Path):
    """The (h, alpha) plane coloured by final test error (mean over seeds), with the line
    alpha* = 1/sqrt(h) that separates the regimes. Runs without a width (a user model
    without ``width_from``), or of a single width: test error against alpha, one line per
    width, and the crossover alpha* = 1/sqrt(h) marked where h is known."""
    table = _finished(catalog(directory))
    mean = table.groupby(["width", "alpha"], dropna=False)["test_err"].mean().reset_index()
    fig, axes = _figure()
    ax = axes[0, 0]
    if _widthless(table) or mean["width"].nunique() < 2:
        for (width, group), style in zip(mean.groupby("width", dropna=False), _STYLES * 10):
            line, = ax.plot(group["alpha"], group["test_err"], "o" + style, label=_width_label(width))
            if not pd.isna(width):
                ax.axvline(1 / np.sqrt(width), color=line.get_color(), ls=":", lw=1,
                           label=rf"$\alpha^* = 1/\sqrt{{h}}$ = {1 / np.sqrt(width):.2g}")
        ax.set_xscale("log")
        ax.set_xlabel(r"$\alpha$")
        ax.set_ylabel("test error (mean over seeds)")
        ax.legend(fontsize=8)
        ax.set_title("feature (small alpha) and lazy (large) training" + (
            "\nruns without a width h: no (h, alpha) plane (set width_from)" if _widthless(table) else
            "\none width: no (h, alpha) plane"), fontsize=10)
        return fig
    points = ax.scatter(mean["width"], mean["alpha"], c=mean["test_err"], cmap="viridis", s=80)
    fig.colorbar(points, ax=ax, label="test error (mean over seeds)")
    h = np.geomspace(mean["width"].min(), mean["width"].max(), 50)
    ax.plot(h, 1 / np.sqrt(h), "k--", label=r"$\alpha^* = 1/\sqrt{h}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_ticks(ax.xaxis, mean["width"])
    ax.set_xlabel("width h")
    ax.set_ylabel(r"$\alpha$")
    ax.legend(fontsize=8)
    ax.set_title("feature (below the line) and lazy (above) training")
    return fig


def ensemble_figure(directory: str | Path):
    """Test error of the mean predictor and fluctuations delta_F vs h, one line per alpha;
    for runs without a width (or of one width), against alpha, one line per width."""
    ens = ensemble(directory)
    if int(ens["seeds"].max()) < 2:
        raise GflowError(f"{directory}: every (alpha, width) has one seed; averages over initialisations need "
                         "at least two seeds per point (add seeds to the sweep's grid)")
    ens = ens[ens["seeds"] >= 2]
    fig, axes = _figure(2)
    against_alpha = _widthless(ens) or ens["width"].nunique() < 2
    if against_alpha:
        for (width, group), style in zip(ens.groupby("width", dropna=False), _STYLES * 10):
            group = group.sort_values("alpha")
            axes[0, 0].plot(group["alpha"], group["ensemble_test_err"], "o" + style, label=_width_label(width))
            axes[0, 1].plot(group["alpha"], group["delta_F"], "o" + style, label=_width_label(width))
    else:
        exponents = fluctuation_exponents(ens).set_index("alpha")["delta_F_exponent"]
        for alpha, group in ens.groupby("alpha"):
            group = group.sort_values("width")
            slope = exponents[alpha]
            axes[0, 0].plot(group["width"], group["ensemble_test_err"], "o-", label=rf"$\alpha$ = {alpha:g}")
            axes[0, 1].plot(group["width"], group["delta_F"], "o-",
                            label=rf"$\alpha$ = {alpha:g}" + (f", slope {slope:.2f}" if np.isfinite(slope) else ""))
    low, high = int(ens["seeds"].min()), int(ens["seeds"].max())
    axes[0, 0].set_ylabel("test error of the mean predictor")
    axes[0, 0].set_title(f"mean predictor over {low if low == high else f'{low}-{high}'} seeds", fontsize=10)
    axes[0, 1].set_ylabel(r"$\delta F$ (RMS over seeds)")
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_title(r"fluctuations over seeds" + ("" if against_alpha else r" ($\sim h^{-1/2}$ when lazy)"),
                         fontsize=10)
    for ax in axes[0]:
        ax.set_xscale("log")
        if against_alpha:
            ax.set_xlabel(r"$\alpha$")
        else:
            _plain_ticks(ax.xaxis, ens["width"])
            ax.set_xlabel("width h")
        ax.legend(fontsize=8)
    _no_width_note(axes[0, 0], ens)
    return fig


FORMATS = ("png", "pdf", "svg", "eps", "jpg")


def _finished_with(directory: Path, column: str, missing: str) -> pd.DataFrame:
    """The finished runs whose catalog has ``column``; GflowError ``missing`` when none has."""
    table = _finished(catalog(directory)).dropna(subset=[column])
    if table.empty:
        raise GflowError(missing)
    return table


def _per_run(directory: Path, table: pd.DataFrame, draw: Callable, axes) -> None:
    """Call ``draw(axes, traj, colour, scale)`` for each run, coloured by log10 of its scale
    (sqrt(h) alpha, or alpha for runs without a width; colour bar), and add the colour bar."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    scales = np.log10(table["scale"].to_numpy())
    one_scale = bool(np.ptp(scales) == 0)  # one colour scale means nothing: a colour per run instead
    norm = matplotlib.colors.Normalize(scales.min(), max(scales.max(), scales.min() + 1e-9))
    for i, (_, row) in enumerate(table.sort_values("scale").iterrows()):
        colour = matplotlib.colormaps["tab10"](i % 10) if one_scale else cmap(norm(np.log10(row["scale"])))
        try:
            draw(axes, TrajectoryFile(directory / row["file"]), colour, row["scale"])
        except FileFormatError:  # data past what the catalog read fails its checks: the other runs still draw
            continue
    if not one_scale:
        axes[0].figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes),
                                label=_scale_label(table, log=True))


def alignment_figure(directory: str | Path):
    """Signatures of feature learning at the kernel snapshots, one line per run coloured by
    sqrt(h) alpha: the kernel-target alignment A(t) = y^T Theta y / (||Theta||_F ||y||^2)
    and the kernel's effective rank, against t (log)."""
    directory = Path(directory)
    table = _finished_with(directory, "kernel_alignment", "no run has kernel snapshots: run with kernel_n > 0")
    fig, axes = _figure(2)

    def draw(axes, traj, colour, scale):
        sig = traj.kernel_signatures(top=1)
        sig = sig[sig["t"] > 0]
        axes[0].plot(sig["t"], sig["alignment"], "o-", color=colour, ms=3)
        axes[1].plot(sig["t"], sig["effective_rank"], "o-", color=colour, ms=3)

    _per_run(directory, table, draw, axes[0])
    for ax, name in zip(axes[0], ("kernel-target alignment A(t)", "effective rank of the kernel")):
        ax.set_xscale("log")
        ax.set_xlabel("t")
        ax.set_ylabel(name)
        ax.set_title(name, fontsize=10)
    axes[0, 1].set_yscale("log")
    return fig


_DYNAMICS_STYLE = {"gradient flow": "-", "momentum flow": "-.", "gd": "--", "heavy-ball": (0, (5, 1, 1, 1)),
                   "central flow": ":", "modified flow": (0, (1, 1, 3, 1))}


def dynamics(cfg) -> str:
    """What a run integrated, as a figure's legend names it: gradient flow, momentum flow,
    gradient descent (gd), heavy-ball, or the central or modified flow of gd."""
    if cfg.solver in ("gd", "heavy-ball"):
        return cfg.solver
    if cfg.flow in ("central", "modified"):
        return f"{cfg.flow} flow"
    return "momentum flow" if cfg.momentum else "gradient flow"


def sharpness_figure(directory: str | Path):
    """The top eigenvalue of the loss Hessian (sharpness) along each run, log-log, one line
    per run coloured by sqrt(h) alpha (alpha without a width), its line style the dynamics
    (gradient flow, gd, heavy-ball, the central or modified flow of gd: a legend), with
    gradient descent's stability limit 2/lr for the runs that have a learning rate;
    beside it, the same against t / (sqrt(h) alpha)."""
    import matplotlib

    directory = Path(directory)
    table = _finished_with(directory, "sharpness", "no run has a Hessian spectrum: run with hessian_k > 0")
    fig, axes = _figure(2)
    kinds, limits = set(), set()

    def draw(axes, traj, colour, scale):
        times, values = traj.hessian_spectrum()
        kind = dynamics(traj.config)
        kinds.add(kind)
        if traj.config.lr is not None and kind != "gradient flow":
            limits.add(2 / traj.config.lr)
        keep = times > 0
        axes[0].loglog(times[keep], values[keep, 0], color=colour, ls=_DYNAMICS_STYLE[kind])
        axes[1].loglog(times[keep] / scale, values[keep, 0], color=colour, ls=_DYNAMICS_STYLE[kind])

    _per_run(directory, table, draw, axes[0])
    rescaled = r"$t / \alpha$" if _widthless(table) else r"$t / (\sqrt{h}\,\alpha)$"
    for ax, label in zip(axes[0], ("t", rescaled)):
        for limit in sorted(limits):
            ax.axhline(limit, color="0.5", lw=0.8, ls="--")
        ax.set_xlabel(label)
        ax.set_ylabel(r"sharpness $\lambda_{\max}$ of the loss Hessian")
        ax.grid(True, which="both", alpha=0.3)
    handles = [matplotlib.lines.Line2D([], [], color="k", ls=_DYNAMICS_STYLE[k], label=k)
               for k in _DYNAMICS_STYLE if k in kinds]
    handles += [matplotlib.lines.Line2D([], [], color="0.5", ls="--", lw=0.8, label=f"2/lr = {limit:.3g}")
                for limit in sorted(limits)]
    axes[0, 0].legend(handles=handles, fontsize=8)
    _no_width_note(axes[0, 1], table)
    return fig


def weight_scaling_figure(directory: str | Path):
    """The paper's weight-scaling figure: sqrt(h) ||w(T) - w0|| / ||w0|| against sqrt(h) alpha,
    one line per h, log-log, with the slope fitted over the lazy runs (sqrt(h) alpha >= 100,
    an offset per width; the theory's slope is -1)."""
    from .timescales import weight_scaling

    table = _finished(catalog(directory)).dropna(subset=["weight_change"])
    table["scaled_change"] = np.sqrt(table["width"]) * table["weight_change"]
    fig, axes = _figure()
    ax = axes[0, 0]
    _per_width(ax, table, "scaled_change")
    ax.set_yscale("log")
    ax.set_ylabel(r"$\sqrt{h}\,\|w(T)-w_0\| / \|w_0\|$")
    try:
        fit = weight_scaling(table)
    except GflowError:
        ax.set_title("weight change at the end of training")
        return fig
    x = np.geomspace(100.0, table["scale"].max(), 20)
    ax.plot(x, fit["prefactor"] * x ** fit["pooled_exponent"], "k--", lw=1,
            label=f"lazy fit: slope {fit['exponent']:.2f} ({fit['runs']} runs; one line: {fit['pooled_exponent']:.2f})")
    ax.legend(fontsize=8)
    ax.set_title(f"weight change: slope {fit['exponent']:.2f} in the lazy regime (theory -1)", fontsize=10)
    return fig


def layers_figure(directory: str | Path):
    """Per layer, against t (log-log): the relative weight change ||W_l(t) - W_l(0)|| /
    ||W_l(0)|| (left) and, for runs with kernel snapshots, the change of the hidden
    representations on the kernel subset (right); colour: sqrt(h) alpha (alpha without a
    width), line style and marker: layer (legend, the first run's names)."""
    import json

    import matplotlib

    directory = Path(directory)
    table = _finished(catalog(directory))
    fig, axes = _figure(2)
    names: list[list[str]] = [[], []]

    def draw(axes, traj, colour, scale):
        times = traj.save_times
        keep = times > 0
        groups = [("saves/weight_change", "saves"), ("saves/representation_change", "saves/representation_change")]
        for ax, (name, where), seen in zip(axes, groups, names):
            if not traj.has(name):
                continue
            seen[:] = seen or json.loads(traj.read_attr(where, "layers"))
            for i, column in enumerate(traj.read(name).T):
                ax.loglog(times[keep], column[keep], ls=_STYLES[i % 4], marker=_MARKERS[i // 4 % len(_MARKERS)],
                          markevery=0.2, ms=3, color=colour, lw=1)

    _per_run(directory, table, draw, axes[0])
    titles = ("relative weight change per parameter tensor", "relative change of hidden representations")
    for ax, title, seen in zip(axes[0], titles, names):
        ax.set_xlabel("t")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        handles = [matplotlib.lines.Line2D([], [], color="k", ls=_STYLES[i % 4], marker=_MARKERS[i // 4 % len(_MARKERS)],
                                           ms=3, lw=1, label=name) for i, name in enumerate(seen[:LEGEND_LAYERS])]
        if len(seen) > LEGEND_LAYERS:
            handles.append(matplotlib.lines.Line2D([], [], color="none", label=f"... {len(seen) - LEGEND_LAYERS} more"))
        if handles:
            ax.legend(handles=handles, fontsize=7, ncols=2 if len(handles) > 6 else 1)
        else:
            ax.text(0.5, 0.5, "no run stored it (kernel_n > 0 does)", transform=ax.transAxes, ha="center",
                    fontsize=8, color="0.4")
    axes[0, 0].set_ylabel(r"$\|W_l(t)-W_l(0)\| / \|W_l(0)\|$")
    axes[0, 1].set_ylabel(r"$\|Z_l(t)-Z_l(0)\|_F / \|Z_l(0)\|_F$")
    return fig


def figure_path(out: str | Path) -> Path:
    """Where a figure named ``out`` goes: ``out`` with a known suffix, or ``out.png`` when it has
    none; one GflowError for an unknown suffix or a missing directory."""
    if not str(out) or not Path(out).name:
        raise GflowError(f"figure {str(out)!r}: give a file name, e.g. fig.png")
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


_DRAW: dict[str, Callable] = {
    "test-error": test_error_figure, "kernel-change": kernel_change_figure,
    "learning-curves": learning_curves_figure,
    "phase": phase_figure, "ensemble": ensemble_figure, "alignment": alignment_figure,
    "sharpness": sharpness_figure, "weight-scaling": weight_scaling_figure,
    "layers": layers_figure,
}


def plot(directory: str | Path, kind: str, out: str | Path) -> Path:
    """Draw the figure ``kind`` (one of KINDS) for the runs in ``directory`` into ``out`` (PNG,
    PDF, SVG... by its suffix; ``.png`` added when it has none); returns the path written."""
    if kind not in _DRAW:
        raise GflowError(f"kind = {kind!r}: must be one of {', '.join(KINDS)}")
    out = figure_path(out)
    fig = _DRAW[kind](directory)
    fig.savefig(out, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out
