"""Validation of the time scales on real data (digits parity, FC L=3 softplus, gradient flow).

    python benchmarks/bench_timescales.py [--quick] [--out benchmarks/results/timescales]

1. t1 (first time the linearisation gap exceeds 0.1) over widths x alphas x seeds in the
   feature regime; fit t1 ~ alpha^a h^b (seed 000, finding (iv): a = 1, b = 1/2). The final kernel
   change is printed against sqrt(h) alpha, where it should collapse (finding (i)).
2. Distance between the network and its linearisation at a fixed time over alphas; fit the
   exponent (Chizat, Oyallon, Bach, seed 002: -1).
Writes t1.csv, lazy_distance.csv, fits.json and timescales.png.
"""

import argparse
import json
from pathlib import Path

import numpy as np

from gflow import RunConfig
from gflow.timescales import lazy_distance_scaling, power_law, t1_scaling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny grid (seconds), for the tests")
    parser.add_argument("--seeds", type=int, default=3, help="initialisations per (h, alpha)")
    parser.add_argument("--out", default="benchmarks/results/timescales")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.quick:
        base = RunConfig(ptr=50, pte=10, width=20, t_end=30.0, saves=25, save_t_min=1e-3)
        widths, alphas, seeds, lazy_alphas = (16, 64), (0.02, 0.08), (0,), (4.0, 16.0)
    else:
        base = RunConfig(ptr=200, pte=100, t_end=100.0, saves=60, save_t_min=1e-3)
        widths, alphas, seeds = (100, 200, 400, 800), (0.01, 0.03, 0.1), tuple(range(args.seeds))
        lazy_alphas = (3.0, 10.0, 30.0, 100.0, 300.0)

    t1, fit = t1_scaling(base, widths, alphas, out / "runs", seeds=seeds)
    collapse_x = np.log(t1["sqrt_h_alpha"])
    spread = {name: float(np.std(np.log(t1["kernel_change_end"]) - np.polyval(np.polyfit(x, np.log(t1["kernel_change_end"]), 1), x)))
              for name, x in (("vs_sqrt_h_alpha", collapse_x), ("vs_alpha", np.log(t1["alpha"])))}
    lazy, lazy_exponent = lazy_distance_scaling(base.replace(t_end=10.0, saves=10, save_t_min=0.1), lazy_alphas, out / "runs")

    print(t1.drop(columns=["file"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"\nt1 ~ alpha^{fit['alpha_exponent']:.3f} h^{fit['width_exponent']:.3f}   (paper: alpha^1 h^0.5; {fit['runs']} runs)")
    print(f"kernel change at the end: log-scatter around a power law in sqrt(h) alpha {spread['vs_sqrt_h_alpha']:.3f}, "
          f"in alpha alone {spread['vs_alpha']:.3f} (collapse: the first is smaller)")
    print(lazy.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"distance to the linearised dynamics at t = 10 ~ alpha^{lazy_exponent:.3f}   (Chizat et al.: -1)")

    t1.to_csv(out / "t1.csv", index=False)
    lazy.to_csv(out / "lazy_distance.csv", index=False)
    fits = {**fit, "kernel_change_scatter": spread, "lazy_distance_exponent": lazy_exponent}
    (out / "fits.json").write_text(json.dumps(fits, indent=1) + "\n")
    _plot(t1, lazy, out / "timescales.png")


def _plot(t1, lazy, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for h, g in t1.groupby("width"):
        axes[0].loglog(g["sqrt_h_alpha"], g["t1_linearization"], "o-", label=f"h = {h}")
        axes[1].loglog(g["sqrt_h_alpha"], g["kernel_change_end"], "o-", label=f"h = {h}")
    x = np.sort(t1["sqrt_h_alpha"].to_numpy())
    slope, scale = power_law(t1["sqrt_h_alpha"].to_numpy(), t1["t1_linearization"].to_numpy())
    axes[0].loglog(x, scale * x**slope, "k--", lw=0.8, label=f"fit: slope {slope:.2f}")
    axes[0].set(xlabel=r"$\sqrt{h}\,\alpha$", ylabel=r"$t_1$ (linearisation gap > 0.1)", title="time to leave the tangent space")
    axes[1].set(xlabel=r"$\sqrt{h}\,\alpha$", ylabel=r"$\|\Theta(T)-\Theta_0\| / \|\Theta_0\|$", title="kernel change at the end")
    axes[2].loglog(lazy["alpha"], lazy["distance_at_T"], "o-")
    axes[2].set(xlabel=r"$\alpha$", ylabel="||f - f_lin|| / ||f_lin - f0|| at t = 10", title="distance to the lazy dynamics")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
