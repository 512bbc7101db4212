"""The cost of one gradient evaluation, per architecture: gflow's eager evaluation, its
compiled one (``compile = true``: torch.compile of the functional forward+backward), a raw
forward+backward of the plain module, and (where JAX is installed) a JAX ``jit`` of the same
value and gradient of the same loss, all on one thread (``--threads``: as many; the process
is held to that many cores, since JAX's thread pool takes every core otherwise), float64,
in one process. ``elements`` is n A, the forward pass's elements by which ``compile`` is
decided when unset (gflow.compilation), ``saved_ns_per_element`` what compiling saved per
element, ``compiled_by_default`` that decision.

    python benchmarks/evaluation.py [--quick] [--threads N] [--out docs/benchmarks]
    pip install jax      # optional: adds the JAX column for the fully connected networks

The JAX function is checked against gflow's evaluation (loss and gradient to 1e-10
relative) before it is timed. Times are medians over calls made in turn (one of each per
round), so that all variants see the same machine speed; compiling is paid before timing
and reported apart. gflow does not depend on JAX; only this benchmark uses it.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gflow import RunConfig, build
from gflow.bench import _raw_pass
from gflow.compilation import decide, elements_per_point
from gflow.data import DEFAULT_DIRS
from gflow.models import activation_scale

# (label, config fields): the default run's problem (digits, 1000 points, FC L = 3, softplus,
# soft hinge) at three widths, the built-in CNN, and the paper's 10k Fashion-MNIST points
# (where Debian's dataset-fashion-mnist is installed).
PROBLEMS = {
    "fc h=100": {},
    "fc h=300": {"width": 300},
    "fc h=1000": {"width": 1000},
    "cnn c=16": {"arch": "cnn", "width": 16, "depth": 2},
    "fashion 10k fc h=100": {"dataset": "fashion-mnist", "ptr": 10000, "pte": 100},
    "fashion 10k fc h=300": {"dataset": "fashion-mnist", "ptr": 10000, "pte": 100, "width": 300},
}
SECONDS = 10.0  # time per variant that caps the rounds of the slower problems


def jax_evaluation(flow) -> Callable[[], None] | None:
    """A JAX jit of L(w) and its gradient for the fully connected network of ``flow``
    (None for other architectures), after checking it against gflow's evaluation."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    module, cfg = flow.model.module, flow.cfg
    if type(module).__name__ != "FullyConnected" or cfg.loss != "softhinge" or not cfg.centered:
        return None
    scale = activation_scale("softplus")  # gflow's normalisation of softplus
    multipliers, kappa, alpha, beta = list(module.multipliers), module.kappa, flow.alpha, cfg.beta
    x, y, f0 = (jnp.asarray(t.cpu().numpy()) for t in (flow.x_train, flow.y_train, flow.f0_train))
    n = x.shape[0]

    def loss(weights):
        z, last = x, len(weights) - 1
        for i, (w, c) in enumerate(zip(weights, multipliers)):  # the scalars on the weights, as gflow.models._folded
            z = z @ (w * (c * (scale if i else 1.0) * (kappa if i == last else 1.0))).T
            if i < last:
                z = jax.nn.softplus(z)
        a = alpha * (z[:, 0] - f0)
        return jnp.sum(jnp.logaddexp(0.0, beta * (1.0 - y * a)) / beta) / (alpha**2 * n)

    step = jax.jit(jax.value_and_grad(loss))
    weights = [jnp.asarray(p.detach().cpu().numpy()) for p in flow.model.parts(flow.w0)]
    value, grads = step(weights)
    ev = flow.evaluate(0.0, flow.y0)
    grad = np.concatenate([np.asarray(g).ravel() for g in grads])
    expected = -ev.dydt.cpu().numpy()
    if not (math.isclose(float(value), float(ev.aux["loss"]), rel_tol=1e-10)
            and np.linalg.norm(grad - expected) <= 1e-10 * np.linalg.norm(expected)):
        raise AssertionError("the JAX function is not gflow's loss and gradient")

    def once() -> None:
        jax.block_until_ready(step(weights))

    return once


def measure(label: str, fields: dict, rounds: int) -> dict[str, float]:
    cfg = RunConfig(**fields)
    eager = build(cfg.replace(compile=False))
    compiled = build(cfg.replace(compile=True))
    start = time.perf_counter()
    compiled.evaluate(0.0, compiled.y0)
    compile_s = time.perf_counter() - start
    variants: dict[str, Callable[[], None]] = {
        "raw": _raw_pass(eager),
        "eager": lambda: eager.evaluate(0.0, eager.y0),
        "compiled": lambda: compiled.evaluate(0.0, compiled.y0),
    }
    if importlib.util.find_spec("jax") is not None:
        jax_once = jax_evaluation(eager)
        if jax_once is not None:
            variants["jax"] = jax_once
    start = time.perf_counter()
    variants["eager"]()
    rounds = max(5, min(rounds, int(SECONDS / (time.perf_counter() - start))))
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds + 3):
        for name, call in variants.items():
            start = time.perf_counter()
            call()
            if r >= 3:  # warm-up
                times[name].append(time.perf_counter() - start)
    ms = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    # n A, the forward elements per evaluation by which compile = None decides (gflow.compilation)
    def forward(x: torch.Tensor) -> torch.Tensor:
        return eager.model(eager.w0, x)

    elements = len(eager.x_train) * elements_per_point(forward, eager.x_train)
    row = {"network": label, "parameters": len(eager.w0), "elements": elements, "compile_s": compile_s,
           **{f"{k}_ms": v for k, v in ms.items()}, "eager_over_compiled": ms["eager"] / ms["compiled"],
           "saved_ns_per_element": (ms["eager"] - ms["compiled"]) * 1e6 / elements,
           "compiled_by_default": decide(None, forward, eager.x_train)}
    if "jax" in ms:
        row["eager_over_jax"] = ms["eager"] / ms["jax"]
        row["compiled_over_jax"] = ms["compiled"] / ms["jax"]
    return row


def _available(fields: dict) -> bool:
    """Whether a problem's dataset is on this machine (Fashion-MNIST: a Debian package)."""
    name = fields.get("dataset", "digits")
    return name not in DEFAULT_DIRS or Path(DEFAULT_DIRS[name]).is_dir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the first problem only, few rounds (a smoke test)")
    parser.add_argument("--out", default="benchmarks/results", help="directory for evaluation.csv and .md")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the comparison with JAX is of per-call overhead)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if hasattr(os, "sched_setaffinity"):  # JAX's thread pool ignores torch's setting: hold both to the cores
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
    problems = dict(list(PROBLEMS.items())[:1]) if args.quick else {
        label: fields for label, fields in PROBLEMS.items() if _available(fields)}
    table = pd.DataFrame([measure(label, fields, 10 if args.quick else 200) for label, fields in problems.items()])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "evaluation.csv", index=False)
    text = table.to_markdown(index=False, floatfmt=".3g") if importlib.util.find_spec("tabulate") else table.to_string()
    (out / "evaluation.md").write_text(text + "\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote {out / 'evaluation.csv'} and {out / 'evaluation.md'}")


if __name__ == "__main__":
    main()
