"""A stored run and its model (gflow.trajectory): files that stand on their own, analysis that
rebuilds the network from the config or takes it from the caller, and refuses a mismatch."""

import json

import h5py
import numpy as np
import pytest
import torch

import gflow
from gflow import GflowError, RunConfig

from . import usercode
from .configs import TINY

CFG = RunConfig(t_end=20.0, saves=5)


@pytest.fixture(scope="module")
def from_objects(tmp_path_factory):
    model, data = usercode.mlp(width=12, outputs=3), usercode.digits(40, 10, classes=3)
    path = tmp_path_factory.mktemp("objects") / "r.h5"
    gflow.run(CFG.replace(loss="cross-entropy"), path, model=model, data=data, progress=False)
    return path, model, data


@pytest.fixture(scope="module")
def from_factories(tmp_path_factory):
    cfg = CFG.replace(model="tests.gflow.usercode:mlp", model_args={"width": 12},
                      data="tests.gflow.usercode:parity_digits", data_args={"n_train": 40, "n_test": 10})
    path = tmp_path_factory.mktemp("factories") / "r.h5"
    gflow.run(cfg, path, progress=False)
    return path


def test_the_file_describes_model_data_and_loss_without_the_users_code(from_objects):
    path, model, data = from_objects
    traj = gflow.open(path)  # no model given: everything stored reads
    s = traj.sources
    assert s["model"]["source"] == "object" and s["model"]["class"] == "tests.gflow.usercode.MLP"
    assert "LayerNorm" in s["model"]["repr"] and s["model"]["outputs"] == 3
    assert s["model"]["parameters"][:2] == [["net.0.weight", [12, 64]], ["net.0.bias", [12]]]
    assert s["model"]["w0_sha256"] == __import__("hashlib").sha256(traj.read("init/w0").tobytes()).hexdigest()
    assert s["data"]["source"] == "arrays" and s["data"]["digest"] == traj.read_attr("data", "digest")
    assert s["data"]["y_dtype"] == "int64" and s["loss"] == {"source": "builtin", "name": "cross-entropy"}
    assert traj.outputs(-1).shape == (40, 3) and traj.read("data/y_train").dtype == np.int64
    assert len(traj.saves) == 6 and traj.status == "finished"


def test_analysis_of_a_run_from_objects_needs_them_and_says_how(from_objects):
    path, model, data = from_objects
    with pytest.raises(GflowError, match=r"model was a Python object \(tests.gflow.usercode.MLP\) .*"
                                         r"gflow.open\(path, model=...\)"):
        gflow.open(path).t1("linearization")
    traj = gflow.open(path, model=model, data=data)
    times, gap = traj.linearization_gap()
    assert gap[0] == 0.0 and np.all(np.isfinite(gap)) and gap[-1] > 0
    assert np.isfinite(traj.curvature(0).radius)


def test_a_model_data_or_loss_that_does_not_match_the_file_is_refused(from_objects):
    path, model, data = from_objects
    torch.manual_seed(123)
    cases = [
        ({"model": usercode.mlp(width=12, outputs=3), "data": data}, "model does not match .*w0 differ"),
        ({"model": usercode.mlp(width=11, outputs=3), "data": data}, "parameter .*net.0.weight.*11.*12"),
        ({"model": model, "data": usercode.digits(40, 10, classes=3, seed=1)}, "data does not match"),
        ({"model": model, "data": data, "loss": "mse"}, "loss does not match .*L\\(w0\\)"),
    ]
    for given, message in cases:
        with pytest.raises(GflowError, match=message):
            gflow.open(path, **given).flow


def test_a_changed_function_with_the_same_parameters_is_refused(from_objects):
    path, model, data = from_objects
    changed = usercode.mlp(width=12, outputs=3)
    changed.load_state_dict(model.state_dict())
    changed.net[2] = torch.nn.Softplus()  # same parameters, another function
    with pytest.raises(GflowError, match="outputs differ from the stored f0"):
        gflow.open(path, model=changed, data=data).flow


def test_a_run_from_factory_references_is_rebuilt_from_the_file_alone_on_the_users_word(from_factories):
    traj = gflow.open(from_factories, trust_code=True)
    assert traj.sources["model"]["reference"] == "tests.gflow.usercode:mlp"
    assert traj.sources["model"]["args"] == {"width": 12}
    assert traj.sources["data"]["reference"] == "tests.gflow.usercode:parity_digits"
    t1 = traj.t1("linearization", eps=1e-3)
    assert 0 < t1 < 20.0
    times, change = traj.kernel_change(n=10)
    assert change[0] == 0 and change[-1] > 0


def test_a_factory_that_now_gives_another_model_is_refused(from_factories, tmp_path):
    path = tmp_path / "r.h5"
    path.write_bytes(from_factories.read_bytes())
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["config"])
        config["seed"] = 5  # the factory would now initialise another w0
        f.attrs["config"] = json.dumps(config)
    with pytest.raises(GflowError, match="w0 differ"):
        gflow.open(path, trust_code=True).linearization_gap()


def test_kernel_signatures_are_those_of_a_kernel_recomputed_from_the_stored_state(tmp_path):
    from gflow.kernels import alignment, effective_rank, ntk

    traj = gflow.run(TINY.replace(kernel_n=20, kernel_every=1), tmp_path / "k.h5", progress=False)
    sig = traj.kernel_signatures(top=3)
    assert list(sig["t"]) == list(traj.save_times)
    flow = traj.flow
    theta = ntk(flow.model, flow.weights(traj.state(-1).to(flow.w0)), flow.x_train[:20])
    lam = torch.linalg.eigvalsh(theta).flip(0)
    assert sig["alignment"].iloc[-1] == pytest.approx(alignment(theta, flow.y_train[:20]), rel=1e-10)
    assert sig["effective_rank"].iloc[-1] == pytest.approx(effective_rank(lam), rel=1e-10)
    assert sig["lambda_1"].iloc[-1] == pytest.approx(float(lam[0]), rel=1e-10)
    row = gflow.catalog(tmp_path).iloc[0]
    assert row["kernel_alignment"] == pytest.approx(sig["alignment"].iloc[-1])


def test_representation_change_is_the_relative_change_of_each_hidden_layers_pre_activations(tmp_path):
    traj = gflow.run(TINY, tmp_path / "r.h5", progress=False)
    table = traj.representation_change(n=20)
    flow = traj.flow
    assert list(table.columns) == ["t", "weights.0", "weights.1"] and table.iloc[0, 1:].eq(0).all()
    # Independently: the first hidden layer's pre-activations are x W_0^T / sqrt(d).
    w0, w = flow.model.parts(flow.w0)[0], flow.model.parts(flow.weights(traj.state(-1)))[0]
    x = flow.x_train[:20]
    z0, z = x @ w0.T / x.shape[1] ** 0.5, x @ w.T / x.shape[1] ** 0.5
    assert table["weights.0"].iloc[-1] == pytest.approx(float((z - z0).norm() / z0.norm()), rel=1e-10)


def test_representation_change_of_a_user_module_reads_its_linear_layers(tmp_path):
    model, data = usercode.mlp(width=12), usercode.parity_digits(40, 10)
    traj = gflow.run(RunConfig(t_end=5.0, saves=3), tmp_path / "u.h5", model=model, data=data, progress=False)
    table = traj.representation_change(n=10)
    assert len(table) == len(traj) and len(table.columns) >= 2 and (table.iloc[-1, 1:] > 0).all()


def test_a_run_with_kernel_snapshots_stores_the_representation_change_a_recomputation_gives(tmp_path):
    traj = gflow.run(TINY.replace(kernel_n=15), tmp_path / "k.h5", progress=False)
    assert traj.has("saves/representation_change")
    stored = traj.representation_change(n=15)
    again = traj.representation_change(n=14)  # not what was stored: computed now
    assert list(stored.columns) == ["t", "weights.0", "weights.1"] and len(stored) == len(traj)
    # Recomputed at the stored states on the same 15 points: equal to rounding.
    flow = traj.flow
    x = flow.x_train[:15]
    z0 = flow.model.hidden(flow.w0, x)["weights.1"]
    z = flow.model.hidden(flow.weights(traj.state(-1)), x)["weights.1"]
    assert stored["weights.1"].iloc[-1] == pytest.approx(float((z - z0).norm() / z0.norm()), rel=1e-12)
    assert len(again) == len(traj)


def test_a_linearized_run_stores_no_representation_change_and_says_why_it_has_none(tmp_path):
    traj = gflow.run(TINY.replace(linearized=True, kernel_n=10), tmp_path / "lin.h5", progress=False)
    assert traj.status == "finished" and not traj.has("saves/representation_change")
    with pytest.raises(GflowError, match="not for a linearized run"):
        traj.representation_change(n=10)


def test_weights_and_named_parameters_read_without_the_network(from_factories):
    from gflow.store import TrajectoryFile

    file = TrajectoryFile(from_factories)  # no trust, no user code: the file alone
    params = file.parameters(-1)
    assert [[n, list(p.shape)] for n, p in params.items()] == file.sources["model"]["parameters"]
    flat = torch.cat([p.reshape(-1) for p in params.values()])
    assert torch.equal(flat, file.weights(-1)) and torch.equal(flat, file.state(-1)[: len(flat)])
    assert torch.equal(gflow.open(from_factories).weights(-1), flat)  # stored: the network is not rebuilt


def test_kernel_change_honours_n_when_snapshots_were_stored_on_other_points(tmp_path):
    path = tmp_path / "k.h5"
    gflow.run(TINY.replace(kernel_n=6, kernel_every=1), path, progress=False)
    traj = gflow.open(path)
    stored = traj.kernel_change()
    assert np.array_equal(stored[1], traj.stored_kernel_change()[1])
    assert np.array_equal(traj.kernel_change(n=6)[1], stored[1])
    other = traj.kernel_change(n=12)[1]
    assert len(other) == len(traj) and not np.allclose(other[-1], stored[1][-1])
