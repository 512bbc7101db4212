"""Empirical NTK: gflow.ntk (structured: per-layer Gram matrices of inputs and deltas; and
the generic vmap-of-gradients Jacobian path) against a per-sample autograd loop, and
against the J J^T matrix product alone.

    python benchmarks/bench_kernels.py [--points 500 2000 10000] [--width 300] [--quick]

Model: FC L=3 softplus on digits inputs (d = 64; beyond digits' 1797 points the inputs
are repeated with noise), NTK parametrization, float64. For each number of points n: the
time of gflow.ntk (structured), of the Jacobian path, of the loop (one backward per
sample, rows stacked, then the same product), of the naive loop (Theta_ij = g_i . g_j
entry by entry, only for n <= 200), and of the product J J^T alone. Above
``--reference-max`` points (default 2000) the O(n^2 P) references are not run (at 10,000
points J alone is 16 GB): the structured kernel is then checked against the loop on a
random 300-point sub-block. Writes kernels.csv.
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
    parser.add_argument("--points", type=int, nargs="+", default=[500, 2000, 10000])
    parser.add_argument("--width", type=int, default=300)
    parser.add_argument("--reference-max", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if args.quick:
        args.points, args.width, args.reference_max = [50, 100], 32, 50
    n_max = max(args.points)
    flow = build(RunConfig(ptr=min(n_max, 1797), pte=0, width=args.width))
    x_all = flow.x_train
    if n_max > len(x_all):  # more points than digits has: repeat inputs with noise
        extra = x_all[torch.randint(len(x_all), (n_max - len(x_all),), generator=torch.Generator().manual_seed(0))]
        x_all = torch.cat([x_all, extra + 0.1 * torch.randn_like(extra)])
    ntk(flow.model, flow.w0, x_all[:8], method="jacobian")  # first call: vmap tracing
    budget = 8 * 2**30
    rows = []
    for n in args.points:
        x = x_all[:n]
        theta, t_ntk = timed(lambda: ntk(flow.model, flow.w0, x, max_memory=budget))
        row = {"points": n, "params": flow.n_params, "ntk_s": t_ntk}
        if n <= args.reference_max:
            _, row["jacobian_path_s"] = timed(lambda: ntk(flow.model, flow.w0, x, max_memory=budget, method="jacobian"))
            jac = jacobian(flow.model, flow.w0, x)[:, 0]  # one output: (n, P)
            _, row["jjt_s"] = timed(torch.mm, jac, jac.T)
            del jac
            ref, row["loop_s"] = timed(ntk_loop, flow.model, flow.w0, x)
            if n <= 200:
                _, row["naive_loop_s"] = timed(naive, flow.model, flow.w0, x)
            row["loop_over_ntk"] = row["loop_s"] / t_ntk
            row["ntk_over_jjt"] = t_ntk / row["jjt_s"]
        else:  # check on a random sub-block: the full references cost O(n^2 P)
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(n))[:300]
            ref, theta = ntk_loop(flow.model, flow.w0, x[idx]), theta[idx][:, idx]
        row["max_abs_diff_over_max"] = float((theta - ref).abs().max() / ref.abs().max())
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    table.to_csv(Path(args.out) / "kernels.csv", index=False)


if __name__ == "__main__":
    main()
