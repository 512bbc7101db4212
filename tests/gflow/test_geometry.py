import math

import numpy as np
import pytest
import torch

import gflow
from gflow import RunConfig
from gflow.geometry import (
    curvature,
    directional_derivatives,
    first_crossing,
    linearization_gap,
)
from gflow.models import Linearized


def quadratic(w, x):
    """f(w, x) = (w . x)^2: d/ds = 2 (w.x)(u.x), d2/ds2 = 2 (u.x)^2."""
    return (x @ w) ** 2


def test_directional_derivatives_match_closed_forms():
    gen = torch.Generator().manual_seed(0)
    w, u, x = torch.randn(5, generator=gen), torch.randn(5, generator=gen), torch.randn(7, 5, generator=gen)
    v, a = directional_derivatives(quadratic, w, u, x)
    assert torch.allclose(v, 2 * (x @ w) * (x @ u), rtol=1e-13)
    assert torch.allclose(a, 2 * (x @ u) ** 2, rtol=1e-13)
    c = curvature(quadratic, w, u, x)
    assert c.radius == pytest.approx(float(v.norm()) ** 2 / float(a.norm()), rel=1e-13)
    assert c.exit_time == pytest.approx(c.radius / float(v.norm()), rel=1e-13)


def test_directional_derivatives_match_finite_differences_on_a_network():
    flow = gflow.build(RunConfig(ptr=20, pte=5, width=8, depth=2))
    u = torch.randn(flow.n_params, generator=torch.Generator().manual_seed(2))
    v, a = directional_derivatives(flow.model, flow.w0, u, flow.x_train)
    h = 1e-4
    fp, f0, fm = (flow.outputs(flow.w0 + s * h * u, flow.x_train) for s in (1, 0, -1))
    assert torch.allclose(v, (fp - fm) / (2 * h), rtol=1e-6, atol=1e-9)
    assert torch.allclose(a, (fp - 2 * f0 + fm) / h**2, rtol=1e-4, atol=1e-6)


def test_linear_model_has_no_gap_and_infinite_radius():
    x = torch.randn(4, 3)
    w0, w = torch.zeros(3), torch.ones(3)
    assert linearization_gap(lambda p, x: x @ p, w0, w, x) == 0.0
    assert math.isinf(curvature(lambda p, x: x @ p, w0, torch.ones(3), x).radius)


def test_linearized_model_is_exact_to_first_order_and_flat():
    flow = gflow.build(RunConfig(ptr=20, pte=5, width=8, depth=2))
    lin = Linearized(flow.model, flow.w0)
    u = torch.randn(flow.n_params, generator=torch.Generator().manual_seed(3))
    for eps in (1e-2, 1e-3):
        gap = (lin(flow.w0 + eps * u, flow.x_train) - flow.model(flow.w0 + eps * u, flow.x_train)).norm()
        assert float(gap) < 10 * eps**2 * float(u.norm()) ** 2  # second order in the step
    _, a = directional_derivatives(lin, flow.w0 + u, u, flow.x_train)
    assert float(a.norm()) < 1e-10
    assert torch.allclose(lin(flow.w0, flow.x_train), flow.f0_train)


def test_first_crossing_interpolates_in_log_time_and_is_inf_when_never_reached():
    times = np.array([0.0, 1.0, 10.0, 100.0])
    assert first_crossing(times, np.array([0.0, 0.05, 0.15, 0.5]), 0.1) == pytest.approx(math.sqrt(10.0))
    assert math.isinf(first_crossing(times, np.array([0.0, 0.01, 0.02, 0.03]), 0.1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("t1")
    base = RunConfig(ptr=60, pte=10, width=20, t_end=20.0, saves=20, save_t_min=1e-3)
    return {a: gflow.run(base.replace(alpha=a), d / f"a{a}.h5", progress=False) for a in (0.02, 0.2, 20.0)}


def test_t1_grows_with_alpha_and_is_infinite_in_the_lazy_regime(runs):
    t_small, t_mid = runs[0.02].t1("linearization"), runs[0.2].t1("linearization")
    assert 0 < t_small < t_mid < 20.0
    assert t_mid / t_small == pytest.approx(10.0, rel=0.5)  # t1 ~ alpha in the feature regime
    assert math.isinf(runs[20.0].t1("kernel"))
    assert runs[0.2].t1("curvature") / runs[0.02].t1("curvature") == pytest.approx(10.0, rel=1e-6)


def test_unknown_t1_method_is_a_clear_error(runs):
    with pytest.raises(ValueError, match="linearization, kernel or curvature"):
        runs[0.2].t1("magic")


def test_t1_command_prints_a_row_per_file(runs, capsys):
    from gflow.cli import main

    assert main(["t1", *(str(t.path) for t in runs.values())]) == 0
    out = capsys.readouterr().out
    assert "t1_linearization" in out and out.count(".h5") == 3 and "inf" in out


def test_timescale_validation_script_runs_on_a_tiny_grid(tmp_path):
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "benchmarks/bench_timescales.py", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert 0.7 < fits["alpha_exponent"] < 1.3
    assert -1.5 < fits["lazy_distance_exponent"] < -0.6
    assert (tmp_path / "timescales.png").exists()
