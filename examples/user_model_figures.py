"""Every figure of `gflow plot`, for a network of your own: sweeps of a user MLP, with and
without a width the figures can use, and gradient descent beside the flows.

The model is a plain ``nn.Sequential`` MLP whose hidden size is the factory argument
``hidden``. Three small sweeps on digits:

- ``widths/``: hidden in {16, 64} x alpha in {0.1, 1, 10} x 2 seeds, with ``width_from =
  "hidden"``: the figures put sqrt(h) alpha on their axes and draw the (h, alpha) plane;
- ``no-width/``: the same model at hidden = 32 without ``width_from``: the figures say the
  runs have no width and use alpha alone;
- ``dynamics/``: gradient descent at a learning rate that reaches the edge of stability,
  its central flow and the gradient flow, with the Hessian's top eigenvalue, for the
  sharpness figure (2/lr drawn, line style telling the dynamics apart).

    python examples/user_model_figures.py [--quick] [--out DIR] [--figures DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

import gflow
from gflow.plots import KINDS, plot
from gflow.sweep import summarize


def mlp(d: int = 64, hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def sweeps(quick: bool) -> dict[str, gflow.Sweep]:
    """The sweeps with and without a width the figures can use."""
    base = {"model": "examples.user_model_figures:mlp", "ptr": 60 if quick else 300, "pte": 60 if quick else 300,
            "t_end": 20.0 if quick else 500.0, "saves": 12 if quick else 30, "kernel_n": 20 if quick else 60,
            "kernel_every": 3, "hessian_k": 1}
    widths = [8, 16] if quick else [16, 64]
    return {
        "widths": gflow.Sweep(base={**base, "width_from": "hidden"},
                              grid={"model_args.hidden": widths, "alpha": [0.1, 1.0, 10.0], "seed": [0, 1]}),
        "no-width": gflow.Sweep(base={**base, "model_args": {"hidden": 32}},
                                grid={"alpha": [0.1, 1.0, 10.0], "seed": [0, 1]}),
    }


def dynamics(out: Path, quick: bool) -> None:
    """Gradient descent at lr = 0.25 (its stability limit 2/lr = 8 lies below the sharpness
    the gradient flow reaches with the quadratic loss: progressive sharpening from 2.4 to 17
    on this model), its central flow, and the gradient flow, with the Hessian's top
    eigenvalue at every save."""
    out.mkdir(parents=True, exist_ok=True)
    base = gflow.RunConfig(model="examples.user_model_figures:mlp", model_args={"hidden": 32}, loss="mse",
                           ptr=60 if quick else 300, pte=60 if quick else 300, t_end=10.0 if quick else 100.0,
                           saves=12 if quick else 40, hessian_k=1)
    for name, cfg in {"gd": base.replace(solver="gd", lr=0.25), "central": base.replace(flow="central", lr=0.25),
                      "gradient": base}.items():
        if not (out / f"{name}.h5").exists():
            gflow.run(cfg, out / f"{name}.h5", progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", default="runs/user-model-figures", help="directory for the sweeps")
    parser.add_argument("--figures", help="directory for the figures (default: OUT/figures)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    out = Path(args.out)
    figures = Path(args.figures or out / "figures")
    figures.mkdir(parents=True, exist_ok=True)
    for name, sweep in sweeps(args.quick).items():
        print(summarize(gflow.run_sweep(sweep, out / name, workers=args.workers, progress=False)))
    dynamics(out / "dynamics", args.quick)
    drawn = [(kind, "widths") for kind in KINDS] + [("phase", "no-width"), ("ensemble", "no-width"),
                                                    ("learning-curves", "no-width"), ("sharpness", "dynamics")]
    for kind, name in drawn:
        path = plot(out / name, kind, figures / f"user-{kind}{'' if name == 'widths' else '-' + name}.png")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
