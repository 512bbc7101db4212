"""When a run compiles its evaluation (gflow.compilation): counted, deterministic, overridable."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import gflow
from gflow import RunConfig, compilation
from gflow.batching import Batch
from gflow.compilation import decide, elements_per_point

SMALL = dict(ptr=40, pte=10, width=12, depth=2)


def test_elements_per_point_counts_each_operations_output_per_point_and_not_the_weights_work():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 5, bias=False), nn.Tanh(), nn.Linear(5, 2, bias=False))
    x = torch.randn(10, 3)
    # per point: the first product (5), tanh (5), the second product (2); the weights'
    # transposes are the same for any number of points and cancel
    assert elements_per_point(net, x) == 12


def test_the_default_runs_forward_pass_is_counted_as_its_layers_widths():
    flow = gflow.build(RunConfig())
    a = elements_per_point(lambda x: flow.model(flow.w0, x), flow.x_train)
    # FC L = 3, h = 100: each hidden layer's product and softplus (2 x 100), then the
    # output's product and squeeze (2 x 1); the scalars are on the weights (not per point)
    assert a == 3 * 2 * 100 + 2


def test_an_explicit_setting_wins_and_unset_compiles_from_the_threshold_on(monkeypatch):
    net = nn.Linear(4, 3, bias=False)
    x = torch.randn(100, 4)  # 3 elements per point: n A = 300
    assert decide(True, net, x) and not decide(False, net, x)
    monkeypatch.setattr(compilation, "COMPILE_ELEMENTS", 300.0)
    assert decide(None, net, x)
    monkeypatch.setattr(compilation, "COMPILE_ELEMENTS", 301.0)
    assert not decide(None, net, x)


def test_too_few_points_or_an_uncountable_forward_pass_stay_eager(monkeypatch):
    monkeypatch.setattr(compilation, "COMPILE_ELEMENTS", 1.0)

    def broken(x):
        raise RuntimeError("cannot run under a dispatch mode")

    assert not decide(None, nn.Linear(4, 3), torch.randn(7, 4))
    assert not decide(None, broken, torch.randn(100, 4))


def test_the_default_run_is_eager_and_a_large_one_compiles_with_one_note_per_process(monkeypatch, capsys):
    assert not gflow.build(RunConfig(**SMALL)).compiles
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(compilation, "COMPILE_ELEMENTS", 1000.0)
    gflow.flow._note_compiling.cache_clear()
    flows = [gflow.build(RunConfig(**SMALL, seed=s)) for s in range(2)]
    assert all(f.compiles for f in flows)
    assert not gflow.build(RunConfig(**SMALL, compile=False)).compiles
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gflow: note: compiling the loss and gradient (a forward pass this large pays for it: "
                   "gflow.compilation; compile = false, --no-compile, turns it off)"]


def _vectorised(batch: Batch, flows: list, ws: list) -> dict:
    batch._template = flows[0]
    return batch._vectorised(flows[0], {i: (f, w) for i, (f, w) in enumerate(zip(flows, ws))})


@pytest.mark.slow
def test_a_compiled_ensembles_vectorised_evaluation_equals_the_eager_one_to_rounding():
    cfg = RunConfig(**SMALL)
    eager = [gflow.build(cfg.replace(seed=s)) for s in range(3)]
    compiled = [gflow.build(cfg.replace(seed=s, compile=True)) for s in range(3)]
    ws = [f.w0 + 0.01 for f in eager]
    a, b = _vectorised(Batch(3), eager, ws), _vectorised(Batch(3), compiled, ws)
    for slot in range(3):
        for x, y in zip(a[slot], b[slot]):
            assert torch.allclose(x, y, rtol=1e-13, atol=1e-15)


def test_an_ensemble_that_does_not_compile_is_vectorised_eagerly_after_one_note(uncompilable, capsys):
    cfg = RunConfig(**SMALL)
    eager = [gflow.build(cfg.replace(seed=s)) for s in range(2)]
    compiled = [gflow.build(cfg.replace(seed=s, compile=True)) for s in range(2)]
    ws = [f.w0 for f in eager]
    batch = Batch(2)
    for _ in range(2):
        a, b = _vectorised(Batch(2), eager, ws), _vectorised(batch, compiled, ws)
        assert all(torch.equal(x, y) for slot in range(2) for x, y in zip(a[slot], b[slot]))
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gflow: note: the ensemble's vectorised evaluation did not compile (RuntimeError: "
                   "Unsupported: a construct the compiler cannot trace); evaluating it eagerly"]


def test_counting_the_forward_pass_imports_no_module():
    # a dispatch mode would import torch's symbolic machinery (sympy, dynamo): 70 MB in every run
    code = ("import sys, torch; from gflow.compilation import elements_per_point; net = torch.nn.Linear(4, 3); "
            "x = torch.randn(10, 4); net(x); before = set(sys.modules); elements_per_point(net, x); "
            "print(sorted(set(sys.modules) - before))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
