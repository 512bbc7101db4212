"""Gradient descent at the edge of stability, beside the gradient flow it discretises
(Cohen, Kaur, Li, Kolter, Talwalkar, ICLR 2021), on digits parity.

    python benchmarks/eos.py [--quick] [--out benchmarks/results/eos]

One gradient-flow run (the default method) and gradient descent at learning rates
eta = 2 / lambda for a few sharpness levels lambda below the flow's peak, each storing the
top Hessian eigenvalue at every save (hessian_k = 1). Along the flow the sharpness rises
(progressive sharpening); gradient descent follows the flow while eta lambda_max(t) < 2,
leaves it when eta lambda_max reaches 2, and its own sharpness then hovers at 2 / eta.
Prints a table per run (max sharpness, the time GD leaves the flow: distance > 0.1) and
writes eos.csv, eos.png (sharpness against t with the 2 / eta lines; distance to the flow).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

import gflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller network and horizon (a smoke test)")
    parser.add_argument("--out", default="benchmarks/results/eos")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = gflow.RunConfig(ptr=300, pte=100, width=100, t_end=400.0, saves=60, save_t_min=0.5, hessian_k=1,
                           hessian_tol=1e-4)
    levels = (0.3, 0.6)  # sharpness levels 2 / eta, below the flow's peak (~1 at alpha = 1)
    if args.quick:
        base = base.replace(ptr=60, width=20, t_end=40.0, saves=10)
        levels = (0.3,)
    start = time.perf_counter()
    flow_run = gflow.run(base, out / "flow.h5", overwrite=True, progress=False)
    rows, tables = [], {}
    for level in levels:
        eta = 2.0 / level
        iterations = round(base.t_end / eta)
        cfg = base.replace(solver="gd", lr=eta, t_end=iterations * eta)
        gd = gflow.run(cfg, out / f"gd-{level:g}.h5", overwrite=True, progress=False)
        table = gflow.compare(gd, flow_run)
        tables[level] = table
        left = table[table["distance"] > 0.1]
        late = table[table["t"] >= table["t"].iloc[-1] / 2]
        rows.append({"eta": eta, "2/eta": level, "iterations": iterations,
                     "flow_sharpness_max": float(table["lambda_max_b"].max()),
                     "t_eta_lambda_reaches_2": float(table["t"][table["lr_lambda_max_a"] >= 1.9].min())
                     if (table["lr_lambda_max_a"] >= 1.9).any() else np.inf,
                     "t_leaves_flow": float(left["t"].iloc[0]) if len(left) else np.inf,
                     "gd_sharpness_late_mean": float(late["lambda_max_a"].mean()),
                     "gd_sharpness_late_over_2_eta": float(late["lambda_max_a"].mean() / level)})
    result = pd.DataFrame(rows)
    print(result.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wall {time.perf_counter() - start:.0f} s")
    result.to_csv(out / "eos.csv", index=False)
    _figure(flow_run, tables, out / "eos.png")
    print(f"wrote {out / 'eos.csv'} and {out / 'eos.png'}")


def _figure(flow_run: gflow.Trajectory, tables: dict[float, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    times, values = flow_run.hessian_spectrum()
    keep = times > 0
    axes[0].loglog(times[keep], values[keep, 0], "k-", lw=2, label="gradient flow")
    for level, table in tables.items():
        line, = axes[0].loglog(table["t"], table["lambda_max_a"], "o-", ms=3, label=f"GD, eta = {2 / level:g}")
        axes[0].axhline(level, color=line.get_color(), ls="--", lw=1)
        axes[1].loglog(table["t"], table["distance"], "o-", ms=3, color=line.get_color(), label=f"eta = {2 / level:g}")
    axes[0].set_xlabel("t")
    axes[0].set_ylabel(r"sharpness $\lambda_{\max}$ (dashed: $2/\eta$)")
    axes[0].legend(fontsize=8)
    axes[1].set_xlabel("t")
    axes[1].set_ylabel(r"$\|f_{GD}(t) - f_{flow}(t)\| / \|f_{flow}(t) - f_0\|$")
    axes[1].set_title("distance of gradient descent to the flow", fontsize=10)
    axes[1].legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
