"""The flows of gradient descent: the central flow (Cohen et al., ICLR 2025) and the modified
flow (Barrett and Dherin, ICLR 2021), checked against finite differences, closed forms and
gradient descent itself."""

import numpy as np
import pytest
import torch
from torch import nn

import gflow
from gflow import ConfigError
from gflow.central import CentralFlow, ModifiedFlow
from gflow.hessian import hessian_vector_product, top_eigenvalues, track_top

from .commands import gflow_cli
from .configs import TINY

# A tiny network whose sharpness rises from 2.4 to 10 along the flow (mse, feature regime).
SHARPENING = TINY.replace(solver="exponential", loss="mse", alpha=0.1, t_end=12.0, saves=8)
LR = 2 / 6  # the edge 2/lr = 6 is reached at t ~ 2.3


@pytest.fixture(scope="module")
def moved():
    flow = gflow.build(SHARPENING)
    w = flow.w0 + 0.05 * torch.randn(flow.n_params, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return flow, w


def test_the_curvature_gradient_matches_finite_differences_of_the_sharpness(moved):
    """grad S = grad_w (u^T H(w) u) at fixed u (Hellmann-Feynman), against central
    differences of S(w) = lambda_max(H(w)) along random directions."""
    flow, w = moved
    central = gflow.build(SHARPENING.replace(flow="central", lr=0.05))
    central.critical = 1
    g = central.analysis(w).g[0, 0]
    rng = torch.Generator().manual_seed(5)
    for _ in range(3):
        d = torch.randn(flow.n_params, generator=rng, dtype=torch.float64)
        eps = 1e-5
        s = [top_eigenvalues(flow, w + e * d, 1, tol=1e-14).values[0] for e in (eps, -eps)]
        assert (s[0] - s[1]) / (2 * eps) == pytest.approx(float(g @ d), rel=1e-6)


def test_tracked_eigenpairs_are_the_dense_ones(moved):
    flow, w = moved
    dense = torch.autograd.functional.hessian(flow.training_loss, w)
    values, vectors = torch.linalg.eigh(dense)
    start = top_eigenvalues(flow, w * 1.01, 3, tol=1e-10).vectors  # from a nearby state
    tracked = track_top(hessian_vector_product(flow, w), start, 2, 1e-12, flow.w0)
    assert np.allclose(tracked.values[:2], values.flip(0)[:2].numpy(), rtol=1e-11)
    overlap = np.abs(tracked.vectors[:, :2].T @ vectors.flip(1)[:, :2].numpy())
    assert np.allclose(overlap, np.eye(2), atol=1e-9)


def test_the_modified_flow_is_the_gradient_of_the_modified_loss(moved):
    """dw/dt = -grad (L + lr/4 ||grad L||^2), the gradient by finite differences of the modified loss."""
    flow, w = moved
    modified = gflow.build(SHARPENING.replace(flow="modified", lr=0.1))
    assert isinstance(modified, ModifiedFlow)
    field = modified.evaluate(0.0, w).dydt

    def modified_loss(v: torch.Tensor) -> float:
        loss, grad, _ = flow.loss_and_grad(v)
        return float(loss) + 0.1 / 4 * float(grad @ grad)

    rng = torch.Generator().manual_seed(3)
    for _ in range(3):
        d = torch.randn(flow.n_params, generator=rng, dtype=torch.float64)
        eps = 1e-6
        fd = (modified_loss(w + eps * d) - modified_loss(w - eps * d)) / (2 * eps)
        assert -float(field @ d) == pytest.approx(fd, rel=1e-6)


class _Ridge(nn.Module):
    """L(z, v) = -c.v + (s0 + b.v) z^2 / 2: at z = 0 the Hessian is diag(s0 + b.v, 0), so the
    sharpness grows linearly along the gradient flow dv/dt = c and the central flow is the
    projection of c on b's orthogonal complement once s0 + b.v reaches 2/lr."""

    def __init__(self, b, c, s0):
        super().__init__()
        self.z = nn.Parameter(torch.zeros(1))
        self.v = nn.Parameter(torch.zeros(len(b)))
        self.register_buffer("b", torch.tensor(b, dtype=torch.float64))
        self.register_buffer("c", torch.tensor(c, dtype=torch.float64))
        self.s0 = s0

    def forward(self, x):
        value = -(self.c @ self.v) + 0.5 * (self.s0 + self.b @ self.v) * self.z[0] ** 2
        return value * torch.ones(len(x), dtype=x.dtype)


def _identity(a, y):
    return a


def test_on_a_ridge_the_central_flow_is_the_projected_flow_in_closed_form(tmp_path):
    b, c, s0, lr = np.array([1.0, 0.5, 0.0]), np.array([0.2, 0.1, 0.3]), 0.5, 1.0
    x = torch.zeros(1, 1, dtype=torch.float64)
    cfg = gflow.RunConfig(flow="central", lr=lr, t_end=10.0, saves=10, save_t_min=1.0, centered=False, rtol=1e-8,
                          atol=1e-12, data=None)
    traj = gflow.run(cfg, tmp_path / "ridge.h5", model=_Ridge(b.tolist(), c.tolist(), s0), data=(x, torch.zeros(1)),
                     loss=_identity, progress=False)
    entry = (2 / lr - s0) / (b @ c)  # the sharpness s0 + b.c t reaches 2/lr at t = 6
    projected = c - (b @ c) / (b @ b) * b
    sigma2 = 2 * (b @ c) / (b @ b)
    saves = traj.saves
    for i, t in enumerate(traj.save_times):
        v = c * min(t, entry) + projected * max(t - entry, 0.0)
        state = traj.weights(i).numpy()
        assert np.allclose(state, np.r_[0.0, v], atol=1e-7), t
        after = t > entry
        assert saves["central_k"][i] == (1 if after else 0)
        assert saves["central_sigma2"][i] == pytest.approx(sigma2 if after else 0.0, rel=1e-8, abs=1e-12)
        loss = -(c @ v)
        assert saves["central_loss"][i] == pytest.approx(loss + (sigma2 / 2 * 2 / lr if after else 0.0), rel=1e-7)
        assert traj.hessian_spectrum()[1][i, 0] == pytest.approx(min(s0 + (b @ c) * t, 2 / lr), rel=1e-7)


def test_the_central_flow_holds_the_sharpness_at_the_edge_where_gradient_descent_reaches_it(tmp_path):
    central = gflow.run(SHARPENING.replace(flow="central", lr=LR), tmp_path / "central.h5", progress=False)
    gd = gflow.run(SHARPENING.replace(solver="gd", lr=LR, t_end=36 * LR, hessian_k=1), tmp_path / "gd.h5",
                   progress=False)
    sharpness = central.hessian_spectrum()[1][:, 0]
    at_edge = central.saves["central_k"].to_numpy() >= 1
    assert at_edge.sum() >= 3 and not at_edge[0]
    assert np.abs(sharpness[at_edge] * LR / 2 - 1).max() < 1e-3
    assert (sharpness[~at_edge] * LR / 2 < 1).all()
    assert (central.saves["central_sigma2"][at_edge] > 0).all()
    # Gradient descent at that learning rate does reach the edge: lr lambda_max >= 2 at some save.
    assert (gd.hessian_spectrum()[1][:, 0] * LR).max() >= 2
    # The gradient flow's sharpness goes past it.
    flow_run = gflow.run(SHARPENING.replace(hessian_k=1), tmp_path / "flow.h5", progress=False)
    assert flow_run.hessian_spectrum()[1][-1, 0] * LR / 2 > 1.3
    table = gflow.compare(gd, central)
    assert {"distance", "lambda_max_b", "central_loss_b", "central_sigma2_b"} <= set(table.columns)


def test_a_resumed_central_flow_continues_the_uninterrupted_one(tmp_path):
    cfg = SHARPENING.replace(flow="central", lr=LR, state_saves=9)
    whole = gflow.run(cfg, tmp_path / "whole.h5", progress=False)
    gflow.run(cfg.replace(max_steps=12), tmp_path / "part.h5", progress=False)
    resumed = gflow.resume(tmp_path / "part.h5", max_steps=10**6)
    assert resumed.status == "finished" and len(resumed) == len(whole)
    assert np.allclose(resumed.outputs(-1), whole.outputs(-1), rtol=1e-4, atol=1e-6)
    assert resumed.saves["central_k"].iloc[-1] == whole.saves["central_k"].iloc[-1]


def test_a_stored_central_flow_replays_between_its_saves(tmp_path):
    traj = gflow.run(SHARPENING.replace(flow="central", lr=LR, state_saves=2), tmp_path / "c.h5", progress=False)
    i = len(traj) - 2  # a save without a stored state, past the edge
    assert traj.saves["central_k"][i] == 1 and i not in set(traj.stored_states.tolist())
    replayed = traj.weights(i)
    flow = traj.flow
    assert np.allclose(flow.outputs(replayed, flow.x_train).numpy(), traj.outputs(i), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    ({"flow": "central"}, "lr = None: flow central models gradient descent at a learning rate"),
    ({"flow": "modified"}, "flow modified models gradient descent"),
    ({"flow": "central", "lr": -1.0}, "must be a finite number > 0"),
    ({"flow": "central", "lr": 0.1, "solver": "gradient-ratio"}, "flow central is integrated by exponential"),
    ({"flow": "central", "lr": 0.1, "solver": "gd"}, "flow central is integrated by"),
    ({"flow": "central", "lr": 0.1, "linearized": True}, "needs the network's curvature"),
])
def test_bad_configs_of_the_flows_of_gradient_descent_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        SHARPENING.replace(**changes)


def test_a_learning_rate_past_the_initial_sharpness_is_one_line_exit_2_and_no_file(tmp_path, capsys):
    out = tmp_path / "c.h5"
    code, _, err = gflow_cli(capsys, "run", "--ptr", 30, "--pte", 10, "--width", 10, "--depth", 2, "--loss", "mse",
                             "--alpha", 0.1, "--flow", "central", "--lr", 1.0, "--out", out)
    assert code == 2 and not out.exists() and not list(tmp_path.iterdir())
    assert err.count("\n") == 1 and "lies at or below the initial sharpness lambda_max = 2.397" in err
    assert "give lr < 0.834" in err
    code, _, err = gflow_cli(capsys, "run", "--flow", "central", "--out", out)
    assert code == 2 and not out.exists() and "give --lr > 0" in err and err.count("\n") == 1


def test_the_central_flow_is_built_for_user_models_too():
    flow = gflow.build(gflow.RunConfig(flow="central", lr=0.1, model="tests.gflow.usercode:mlp",
                                       model_args={"width": 8}, ptr=20, pte=5))
    assert isinstance(flow, CentralFlow) and flow.edge == pytest.approx(20.0)


class _Arch(nn.Module):
    """L(z, v, r) = -c.v - r + gamma r (b.v) + (s0 + b.v) z^2 / 2: along the flow r grows and
    turns the sharpening rate beta = b.c - gamma r |b|^2 negative, so the central flow reaches
    the edge, holds it, and leaves it when beta (its X) reaches 0."""

    def __init__(self, b, c, s0, gamma):
        super().__init__()
        self.z, self.v, self.r = (nn.Parameter(torch.zeros(n)) for n in (1, len(b), 1))
        self.register_buffer("b", torch.tensor(b, dtype=torch.float64))
        self.register_buffer("c", torch.tensor(c, dtype=torch.float64))
        self.s0, self.gamma = s0, gamma

    def forward(self, x):
        bv = self.b @ self.v
        value = -(self.c @ self.v) - self.r[0] + self.gamma * self.r[0] * bv + 0.5 * (self.s0 + bv) * self.z[0] ** 2
        return value * torch.ones(len(x), dtype=x.dtype)


def test_entering_and_leaving_the_edge_are_located_as_a_reference_hybrid_integration_finds_them(tmp_path):
    import scipy.integrate

    b, c, s0, gamma, lr = np.array([1.0, 0.5, 0.0]), np.array([0.2, 0.1, 0.3]), 0.5, 0.01, 1.0
    edge = 2 / lr

    def free(t, y):
        v, r = y[:3], y[3]
        return np.r_[c - gamma * r * b, 1 - gamma * (b @ v)]

    def held(t, y):
        v, r = y[:3], y[3]
        push = c - gamma * r * b
        return np.r_[push - (b @ push) / (b @ b) * b, 1 - gamma * (b @ v)]

    def reaches(t, y):
        return s0 + b @ y[:3] - edge

    def leaves(t, y):
        return b @ (c - gamma * y[3] * b)

    reaches.terminal, leaves.terminal = True, True
    times = np.r_[0.0, np.geomspace(1.0, 30.0, 15)]
    options = {"rtol": 1e-12, "atol": 1e-12, "dense_output": True}
    first = scipy.integrate.solve_ivp(free, (0, 30), np.zeros(4), events=reaches, **options)
    second = scipy.integrate.solve_ivp(held, (first.t[-1], 30), first.y[:, -1], events=leaves, **options)
    third = scipy.integrate.solve_ivp(free, (second.t[-1], 30), second.y[:, -1], **options)
    t_enter, t_leave = first.t[-1], second.t[-1]
    assert 5 < t_enter < 10 and 15 < t_leave < 25  # the reference does enter and leave

    def reference(t):
        phase = first if t <= t_enter else second if t <= t_leave else third
        return phase.sol(t)

    cfg = gflow.RunConfig(flow="central", lr=lr, t_end=30.0, saves=15, save_t_min=1.0, centered=False, rtol=1e-8,
                          atol=1e-12)
    traj = gflow.run(cfg, tmp_path / "arch.h5", model=_Arch(b.tolist(), c.tolist(), s0, gamma),
                     data=(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1)), loss=_identity, progress=False)
    assert np.allclose(traj.save_times, times)
    k = traj.saves["central_k"].to_numpy()
    for i, t in enumerate(times):
        assert np.allclose(traj.weights(i).numpy(), np.r_[0.0, reference(t)], atol=1e-6), t
        assert k[i] == (1 if t_enter < t <= t_leave else 0), t
    assert k.max() == 1 and k[-1] == 0


def test_a_torchdiffeq_method_integrates_the_same_central_flow(tmp_path):
    cfg = SHARPENING.replace(flow="central", lr=LR, t_end=6.0, saves=4)
    default = gflow.run(cfg, tmp_path / "exponential.h5", progress=False)
    dopri = gflow.run(cfg.replace(solver="dopri5", rtol=1e-8, atol=1e-10), tmp_path / "dopri5.h5", progress=False)
    assert dopri.saves["central_k"].iloc[-1] == default.saves["central_k"].iloc[-1] == 1
    change = np.linalg.norm(default.outputs(-1) - default.outputs(0))
    assert np.linalg.norm(dopri.outputs(-1) - default.outputs(-1)) < 1e-3 * change


def test_show_reports_the_edge_and_the_predictions(tmp_path, capsys):
    traj = gflow.run(SHARPENING.replace(flow="central", lr=LR, t_end=6.0, saves=4), tmp_path / "c.h5", progress=False)
    code, out, _ = gflow_cli(capsys, "show", traj.path)
    assert code == 0 and "flow=central lr=0.333333" in out
    last = traj.saves.iloc[-1]
    assert f"1 eigenvalue(s) at the edge 2/lr = 6; predicted GD loss {last['central_loss']:.4e}" in out


class _TwoRidges(nn.Module):
    """L(z, v) = -c.v + sum_i (s_i + b_i.v) z_i^2 / 2: two sharpening directions, so two
    eigenvalues reach the edge in turn and both are held (k = 2)."""

    def __init__(self, b, c, s):
        super().__init__()
        self.z = nn.Parameter(torch.zeros(2))
        self.v = nn.Parameter(torch.zeros(len(c)))
        self.register_buffer("b", torch.tensor(b, dtype=torch.float64))
        self.register_buffer("c", torch.tensor(c, dtype=torch.float64))
        self.register_buffer("s", torch.tensor(s, dtype=torch.float64))

    def forward(self, x):
        value = -(self.c @ self.v) + 0.5 * ((self.s + self.b @ self.v) * self.z**2).sum()
        return value * torch.ones(len(x), dtype=x.dtype)


def test_two_eigenvalues_reach_the_edge_in_turn_and_the_flow_projects_out_both(tmp_path):
    b = np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 0.3, 1.0, 0.0]])
    c, s, lr = np.array([0.2, 0.1, 0.3, 0.1]), np.array([0.5, 0.3]), 1.0
    edge = 2 / lr

    def project(vectors: np.ndarray, x: np.ndarray) -> np.ndarray:
        basis = np.linalg.qr(vectors.T)[0]
        return x - basis @ (basis.T @ x)

    # Closed form: v = c t until s_2 + b_2.v reaches the edge, then the flow moves along c
    # projected off b_2 until s_1 + b_1.v does, then along c projected off both.
    t2 = (edge - s[1]) / (b[1] @ c)
    off_2 = project(b[1:], c)
    t1 = t2 + (edge - s[0] - b[0] @ c * t2) / (b[0] @ off_2)
    off_both = project(b, c)
    assert t2 < t1 < 10

    def v(t: float) -> np.ndarray:
        return c * min(t, t2) + off_2 * np.clip(t - t2, 0, t1 - t2) + off_both * max(t - t1, 0)

    cfg = gflow.RunConfig(flow="central", lr=lr, t_end=10.0, saves=12, save_t_min=1.0, centered=False, rtol=1e-8,
                          atol=1e-12, hessian_k=3, hessian_tol=1e-10)
    traj = gflow.run(cfg, tmp_path / "two.h5", model=_TwoRidges(b.tolist(), c.tolist(), s.tolist()),
                     data=(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1)), loss=_identity, progress=False)
    k = traj.saves["central_k"].to_numpy()
    spectrum = traj.hessian_spectrum()[1]
    gram = b @ b.T
    for i, t in enumerate(traj.save_times):
        assert np.allclose(traj.weights(i).numpy(), np.r_[0.0, 0.0, v(t)], atol=1e-7), t
        assert k[i] == int(t > t2) + int(t > t1), t
        if t > t1:  # both held: X = 2 G^-1 (b_i.c), tr X stored
            assert traj.saves["central_sigma2"][i] == pytest.approx(np.sum(2 * np.linalg.solve(gram, b @ c)), rel=1e-7)
            assert spectrum[i, :2] == pytest.approx([edge, edge], rel=1e-7)
