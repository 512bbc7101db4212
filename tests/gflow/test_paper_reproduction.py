"""The paper's stepper reproduces the original implementation (mariogeiger/gradientflow) step
for step: an independent transcription of its loop (``flow``: a tentative Euler or exact
momentum step, rejected and dt / 10 while a ratio >= 1, dt * 1.1 when all < 1/2, landing on
checkpoints without touching dt; ``compare``: ||g - g'||^2 / (||g|| ||g'||) / max_dgrad and
max |out - out'| / max_dout) against gflow's runs."""

import math

import numpy as np
import pytest
import torch

import gflow
from gflow import RunConfig
from gflow.methods import save_times


def original_flow(flow, cfg):
    """The accepted (t, dt) sequence and the final weights of the original algorithm."""
    checkpoints = iter(save_times(cfg))
    next_t = next(checkpoints)
    n = flow.n_params

    def prepare(x):
        loss, grad, out = flow.loss_and_grad(x[:n])
        return out - flow.f0_train, grad

    def make_step(x, grad, dt):
        if not flow.momentum:
            return x - dt * grad
        decay = math.exp(-dt / cfg.tau)
        v = x[n:] * decay - (1 - decay) * grad
        return torch.cat([x[:n] + dt * v, v])

    def compare(data, new):
        (out, g), (new_out, new_g) = data, new
        dgrad = 0.0 if g.norm() == 0 or new_g.norm() == 0 else float((g - new_g).norm() ** 2 / (g.norm() * new_g.norm()))
        return dgrad / cfg.max_dgrad, float((out - new_out).abs().max()) / (cfg.max_dout / cfg.alpha)

    x, t, dt, accepted = flow.y0.clone(), 0.0, 1.0, []
    data = prepare(x)
    while True:
        if t >= next_t:
            next_t = next(checkpoints, None)
            if next_t is None:
                return accepted, x
        while True:
            if t + dt < next_t:
                new_x, new_t, step = make_step(x, data[1], dt), t + dt, dt
            else:
                new_x, new_t, step = make_step(x, data[1], next_t - t), next_t, next_t - t
            new = prepare(new_x)
            d = compare(data, new)
            if all(c < 1 for c in d):
                if all(c < 0.5 for c in d):
                    dt *= 1.1
                break
            dt /= 10
        x, t, data = new_x, new_t, new
        accepted.append((t, step))


@pytest.mark.parametrize("solver", ["gradient-ratio", "momentum"])
def test_the_papers_stepper_takes_the_original_codes_steps(tmp_path, solver):
    cfg = RunConfig(ptr=60, pte=10, width=20, depth=2, t_end=30.0, saves=8, save_t_min=0.1, solver=solver, tau=0.5)
    traj = gflow.run(cfg, tmp_path / "r.h5", progress=False)
    flow = gflow.build(cfg)
    accepted, x = original_flow(flow, cfg)
    steps = traj.steps
    assert len(steps) == len(accepted)
    assert np.allclose(steps["t"], [t for t, _ in accepted], rtol=1e-12, atol=0)
    assert np.allclose(steps["dt"], [dt for _, dt in accepted], rtol=1e-9, atol=0)
    f_original = flow.outputs(x[: flow.n_params], flow.x_train).numpy()
    moved = np.linalg.norm(f_original - flow.f0_train.numpy())
    assert np.linalg.norm(traj.outputs(-1) - f_original) / moved < 1e-12
