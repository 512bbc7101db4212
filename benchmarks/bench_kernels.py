"""Empirical NTK: gflow.ntk (vmap of per-sample gradients, then J J^T) against a
per-sample autograd loop, and against the J J^T product alone.

    python benchmarks/bench_kernels.py [--points 500 2000] [--width 300] [--quick]

Model: FC L=3 softplus on digits inputs (d = 64), NTK parametrization, float64. For each
number of points n: the time of gflow.ntk, of the loop (one backward per sample, rows
stacked, then the same product), of the naive loop (Theta_ij = g_i . g_j entry by entry,
only for n <= 200), and of the product J J^T alone; writes kernels.csv.
"""

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from gflow import RunConfig, build, ntk
from gflow.kernels import jacobian, ntk_loop


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def naive(model, w, x):
    grads = []
    for xi in x:
        p = w.detach().requires_grad_(True)
        grads.append(torch.autograd.grad(model(p, xi[None]).sum(), p)[0])
    n = len(grads)
    theta = w.new_empty(n, n)
    for i in range(n):
        for j in range(i, n):
            theta[i, j] = theta[j, i] = grads[i] @ grads[j]
    return theta


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--width", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if args.quick:
        args.points, args.width = [50, 100], 32
    n_max = max(args.points)
    flow = build(RunConfig(ptr=min(n_max, 1797), pte=0, width=args.width))
    x_all = flow.x_train
    if n_max > len(x_all):  # more points than digits has: repeat inputs with noise
        extra = x_all[torch.randint(len(x_all), (n_max - len(x_all),), generator=torch.Generator().manual_seed(0))]
        x_all = torch.cat([x_all, extra + 0.1 * torch.randn_like(extra)])
    ntk(flow.model, flow.w0, x_all[:8])  # first call: vmap tracing
    rows = []
    for n in args.points:
        x = x_all[:n]
        theta, t_ntk = timed(lambda: ntk(flow.model, flow.w0, x, max_memory=8 * 2**30))
        jac = jacobian(flow.model, flow.w0, x)
        _, t_prod = timed(torch.mm, jac, jac.T)
        del jac
        ref, t_loop = timed(ntk_loop, flow.model, flow.w0, x)
        row = {"points": n, "params": flow.n_params, "ntk_s": t_ntk, "jjt_s": t_prod, "loop_s": t_loop,
               "max_abs_diff_over_max": float((theta - ref).abs().max() / ref.abs().max())}
        if n <= 200:
            _, row["naive_loop_s"] = timed(naive, flow.model, flow.w0, x)
        row["loop_over_ntk"] = t_loop / t_ntk
        row["ntk_over_jjt"] = t_ntk / t_prod
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.out) / "kernels.csv", index=False)


if __name__ == "__main__":
    main()
