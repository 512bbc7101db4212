"""Gradient descent at the edge of stability beside the flows that model it: the gradient
flow, the modified flow (Barrett and Dherin, ICLR 2021) and the central flow (Cohen, Damian,
Talwalkar, Kolter, Lee, ICLR 2025).

    python benchmarks/central_flow.py [--quick] [--out benchmarks/results/central_flow]

Three problems, each with gradient descent at two learning rates eta:

* ``eos``: benchmarks/eos.py's setting (digits parity, FC L = 3 softplus h = 100, 300
  points, soft hinge, alpha = 1; 2/eta = 0.3 and 0.6);
* ``mse``: the same network and data with the mean-squared loss at alpha = 0.1 (the feature
  regime, where the flow's sharpness rises from 1.2 to 17: the classic progressive
  sharpening of Cohen et al. 2021; 2/eta = 4 and 8);
* ``cnn``: a user model by reference, examples/residual_cnn.py (4 channels, one residual
  block, 386 parameters, 10-class digits 7 x 7, cross-entropy, alpha = 1; 2/eta = 10, 20).

For each: the output distance of each flow to gradient descent over time
(||f_GD - f_flow|| / ||f_flow - f0|| at GD's save times; also to GD's time average, its
outputs averaged over a centred window of 20 iterations, which the central flow models),
their sharpness, and GD's loss with its running mean over 20 iterations against the central
flow's ``central_loss``. The table (central_flow.csv) has, after the central flow reaches the
edge: the largest |lambda_max eta / 2 - 1| of the central flow, the mean distance of each
flow to GD's iterates (``dist_*``) and to their time average (``avg_dist_*``), and the median
relative gap between ``central_loss`` and GD's running-mean loss.

Cost (cost.csv): the central flow at one setting (mse, 2/eta = 4) against the anchor's scheme
(Cohen et al.'s code: Euler steps of a quarter of a GD step, an eigensolve per substep; here
``solver = "euler", dt = eta / 4`` on the same vector field), in gradient-evaluation units
measured in this run: a field evaluation (a gradient with its graph kept), a Hessian-vector
product and a third-derivative product each timed against a plain gradient.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import gflow
from gflow.hessian import hessian_vector_product

WINDOW = 20  # GD iterations in its running-mean loss

PROBLEMS = {
    "eos": (gflow.RunConfig(ptr=300, pte=100, width=100, t_end=400.0, saves=60, save_t_min=0.5), (0.3, 0.6)),
    "mse": (gflow.RunConfig(ptr=300, pte=100, width=100, loss="mse", alpha=0.1, t_end=400.0, saves=60,
                            save_t_min=0.5), (4.0, 8.0)),
    "cnn": (gflow.RunConfig(model="examples.residual_cnn:model", model_args={"channels": 4, "blocks": 1, "classes": 10},
                            data="examples.residual_cnn:data", data_args={"n_train": 200, "n_test": 100, "side": 7},
                            loss="cross-entropy", t_end=60.0, saves=40, save_t_min=0.5), (10.0, 20.0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small horizons and one problem (a smoke test)")
    parser.add_argument("--out", default="benchmarks/results/central_flow")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problems = {"mse": (PROBLEMS["mse"][0].replace(ptr=60, width=20, t_end=20.0, saves=15), (4.0,))} if args.quick \
        else PROBLEMS
    start = time.perf_counter()
    rows, panels = [], {}
    for name, (base, levels) in problems.items():
        result = _problem(name, base, levels, out)
        rows += result["rows"]
        panels[name] = result
        print(pd.DataFrame(result["rows"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "central_flow.csv", index=False)
    _figure(panels, out / "central_flow.png")
    base, levels = problems["mse"]
    cost = _cost(base, levels[0], out, quick=args.quick)
    print(cost.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    cost.to_csv(out / "cost.csv", index=False)
    print(f"wall {time.perf_counter() - start:.0f} s; wrote {out / 'central_flow.csv'}, {out / 'cost.csv'}, "
          f"{out / 'central_flow.png'}")


def _problem(name: str, base: gflow.RunConfig, levels: tuple[float, ...], out: Path) -> dict:
    """GD at each level's learning rate, the gradient flow, the modified and central flows."""
    flows = base.replace(hessian_k=1, hessian_tol=1e-6, state_saves=base.saves + 1)
    gradient = gflow.run(flows, out / f"{name}-flow.h5", overwrite=True, progress=False)
    rows, runs = [], {"gradient": gradient, "levels": {}}
    for level in levels:
        eta = 2.0 / level
        iterations = round(base.t_end / eta)
        gd = gflow.run(base.replace(solver="gd", lr=eta, t_end=iterations * eta, hessian_k=1, hessian_tol=1e-6),
                       out / f"{name}-gd-{level:g}.h5", overwrite=True, progress=False)
        clock = time.perf_counter()
        central = gflow.run(flows.replace(flow="central", lr=eta, hessian_k=0), out / f"{name}-central-{level:g}.h5",
                            overwrite=True, progress=False)
        central_wall = time.perf_counter() - clock
        modified = gflow.run(flows.replace(flow="modified", lr=eta), out / f"{name}-modified-{level:g}.h5",
                             overwrite=True, progress=False)
        times = gd.save_times[gd.save_times > 0]
        f0 = gd.read("init/f0_train")
        iterates = np.stack([gd.outputs(i) for i in np.flatnonzero(gd.save_times > 0)])
        averaged = _gd_average(gd, times)
        distances, averaged_distances = {}, {}
        for label, run in (("gradient", gradient), ("modified", modified), ("central", central)):
            f = run.train_outputs_at(times)
            norm = np.sqrt(((f - f0) ** 2).reshape(len(times), -1).sum(1))
            distances[label] = np.sqrt(((iterates - f) ** 2).reshape(len(times), -1).sum(1)) / norm
            averaged_distances[label] = np.sqrt(((averaged - f) ** 2).reshape(len(times), -1).sum(1)) / norm
        steps = gd.steps
        running = steps["loss"].rolling(WINDOW, center=True, min_periods=1).mean()
        saves = central.saves
        entered = saves["t"][saves["central_k"] >= 1]
        t_edge = float(entered.iloc[0]) if len(entered) else np.inf
        after = times >= t_edge
        sharp = central.hessian_spectrum()[1][:, 0]
        held = (saves["central_k"] >= 1).to_numpy()
        gd_sharp = np.interp(times, *(lambda t, v: (t, v[:, 0]))(*gd.hessian_spectrum()))
        gap = np.abs(np.interp(times, saves["t"], saves["central_loss"]) - np.interp(times, steps["t"], running)) \
            / np.interp(times, steps["t"], running)

        def mean_after(values: np.ndarray) -> float:
            return float(values[after].mean()) if after.any() else np.nan

        rows.append({
            "problem": name, "2/eta": level, "eta": eta, "gd_iterations": iterations, "t_edge": t_edge,
            "central_sharpness_max_dev": float(np.abs(sharp[held] * eta / 2 - 1).max()) if held.any() else np.nan,
            "gd_sharpness_late_over_edge": float(np.median(gd_sharp[after]) / level) if after.any() else np.nan,
            "flow_sharpness_end_over_edge": float(gradient.hessian_spectrum()[1][-1, 0] / level),
            **{f"dist_{label}": mean_after(d) for label, d in distances.items()},
            "central_over_gradient": mean_after(distances["central"]) / mean_after(distances["gradient"]),
            **{f"avg_dist_{label}": mean_after(d) for label, d in averaged_distances.items()},
            "avg_central_over_gradient": mean_after(averaged_distances["central"])
            / mean_after(averaged_distances["gradient"]),
            "central_loss_gap_median": float(np.median(gap[after])) if after.any() else np.nan,
            "central_evals": int(saves["evals"].iloc[-1]), "central_hvps": int(saves["central_hvps"].iloc[-1]),
            "central_thirds": int(saves["central_thirds"].iloc[-1]), "central_wall_s": central_wall,
        })
        runs["levels"][level] = {"gd": gd, "central": central, "modified": modified, "times": times,
                                 "distances": distances, "averaged": averaged_distances, "gd_sharpness": gd_sharp,
                                 "running": (steps["t"].to_numpy(), running.to_numpy())}
    return {"rows": rows, **runs}


def _gd_average(gd: gflow.Trajectory, times: np.ndarray) -> np.ndarray:
    """GD's time-averaged outputs at ``times``: the iterations replayed (one gradient each;
    the stored run's own iterates, checked at its last save), f(w_k) on the training set
    averaged over a centred window of WINDOW iterations."""
    flow, eta = gd.flow, gd.config.lr
    w = flow.w0.clone()
    outputs = []
    for _ in range(round(gd.config.t_end / eta) + 1):
        loss, grad, f = flow.loss_and_grad(w)
        outputs.append(f.cpu().numpy())
        w = torch.add(w, -grad, alpha=eta)  # gflow's Euler step, to the bit
    outputs = np.stack(outputs)
    assert np.allclose(outputs[-1], gd.outputs(-1), rtol=1e-10, atol=1e-12), "the replay left the stored run"
    k = np.round(times / eta).astype(int)
    return np.stack([outputs[max(0, i - WINDOW // 2): i + WINDOW // 2].mean(0) for i in k])


def _units(flow: gflow.GradientFlow, w: torch.Tensor, repeats: int = 20) -> dict[str, float]:
    """Seconds of a plain gradient, and of a field evaluation (gradient with its graph), a
    Hessian-vector product and a third-derivative product in units of it, all at w (each the
    fastest of ``repeats`` tries: what the machine does when nothing else runs)."""
    from gflow.central import _Graph

    def timed(f) -> float:
        times = []
        for _ in range(repeats + 1):
            begin = time.perf_counter()
            f()
            times.append(time.perf_counter() - begin)
        return min(times[1:])

    grad = timed(lambda: flow.loss_and_grad(w))
    graph = timed(lambda: _Graph(flow, w))
    v = torch.randn_like(w)
    product = hessian_vector_product(flow, w)
    hvp = timed(lambda: product(v))

    def third() -> None:
        g = _Graph(flow, w)
        hu = g.hvp(v, graph=True)
        with torch.enable_grad():
            torch.autograd.grad(v @ hu, g.w)

    return {"gradient_s": grad, "evaluation": graph / grad, "hvp": hvp / grad,
            "third": (timed(third) - graph - hvp) / grad}


def _cost(base: gflow.RunConfig, level: float, out: Path, quick: bool) -> pd.DataFrame:
    eta = 2.0 / level
    units = _units(gflow.build(base.replace(flow="central", lr=eta)), gflow.build(base).w0)
    t_end = base.t_end / 4 if not quick else base.t_end
    rows = []
    for label, cfg in (("central flow (exponential, rtol 2e-4)", base.replace(flow="central", lr=eta, t_end=t_end)),
                       ("anchor: Euler, dt = eta/4", base.replace(flow="central", lr=eta, t_end=t_end,
                                                                  solver="euler", dt=eta / 4))):
        clock = time.perf_counter()
        run = gflow.run(cfg.replace(saves=10), out / f"cost-{cfg.solver}.h5", overwrite=True, progress=False)
        wall = time.perf_counter() - clock
        last = run.saves.iloc[-1]
        counts = {"evals": int(last["evals"]), "hvps": int(last["central_hvps"]), "thirds": int(last["central_thirds"])}
        rows.append({"method": label, "t_end": t_end, "gd_steps": round(t_end / eta), **counts,
                     "gradient_units": counts["evals"] * units["evaluation"] + counts["hvps"] * units["hvp"]
                     + counts["thirds"] * units["third"], "wall_s": wall,
                     "sharpness_end_over_edge": float(run.hessian_spectrum()[1][-1, 0] / level)})
    table = pd.DataFrame(rows)
    table["units_per_gd_step"] = table["gradient_units"] / table["gd_steps"]
    table.attrs["units"] = units
    print(f"units (one plain gradient = {units['gradient_s'] * 1e3:.2f} ms): field evaluation "
          f"{units['evaluation']:.2f}, Hessian-vector product {units['hvp']:.2f}, third-derivative product "
          f"{units['third']:.2f}")
    return table


def _figure(panels: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 3, figsize=(15, 4.2 * len(panels)), layout="constrained", squeeze=False)
    for row, (name, runs) in zip(axes, panels.items()):
        times, values = runs["gradient"].hessian_spectrum()
        keep = times > 0
        row[0].loglog(times[keep], values[keep, 0], "k-", lw=2, label="gradient flow")
        for level, r in runs["levels"].items():
            line, = row[0].loglog(r["times"], r["gd_sharpness"], ".", ms=4, label=f"GD, 2/eta = {level:g}")
            color = line.get_color()
            t_c, v_c = r["central"].hessian_spectrum()
            row[0].loglog(t_c[t_c > 0], v_c[t_c > 0, 0], "-", color=color, lw=1.5, label="central flow")
            t_m, v_m = r["modified"].hessian_spectrum()
            row[0].loglog(t_m[t_m > 0], v_m[t_m > 0, 0], ":", color=color, lw=1.5, label="modified flow")
            row[0].axhline(level, color=color, ls="--", lw=0.8)
            for label, style in (("gradient", "-"), ("modified", ":"), ("central", "-")):
                row[1].loglog(r["times"], r["distances"][label], style, lw=1.2 if label == "central" else 0.8,
                              color="k" if label == "gradient" else color, label=f"{label} flow, 2/eta = {level:g}")
            row[1].loglog(r["times"], r["averaged"]["central"], "--", color=color, lw=1.2,
                          label=f"central flow to GD's {WINDOW}-iteration mean")
            steps_t, running = r["running"]
            row[2].loglog(r["gd"].steps["t"], r["gd"].steps["loss"], "-", color=color, lw=0.4, alpha=0.5)
            row[2].loglog(steps_t, running, "-", color=color, lw=1.5, label=f"GD running mean, 2/eta = {level:g}")
            row[2].loglog(r["central"].save_times, r["central"].saves["central_loss"], "--", color="k", lw=1.2)
        row[2].plot([], [], "k--", label="central flow's central_loss")
        row[0].set_title(f"{name}: sharpness (dashed: 2/eta)", fontsize=10)
        row[0].set_ylabel(r"$\lambda_{\max}$")
        row[1].set_title(f"{name}: distance of each flow to GD", fontsize=10)
        row[1].set_ylabel(r"$\|f_{GD} - f_{flow}\| / \|f_{flow} - f_0\|$")
        row[2].set_title(f"{name}: GD's loss (thin), its running mean, and central_loss", fontsize=10)
        row[2].set_ylabel("train loss")
        for ax in row:
            ax.set_xlabel("t = k eta")
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
