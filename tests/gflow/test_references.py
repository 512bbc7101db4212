"""The one gate in front of user code: references named by a file run only on the caller's word."""

import json
import shutil
import sys

import h5py
import numpy as np
import pytest

import gflow
from gflow import GflowError, RunConfig
from gflow.errors import UntrustedCode
from gflow.references import call, resolve

from .commands import gflow_cli as _cli

FACTORY = RunConfig(model="tests.gflow.usercode:mlp", model_args={"width": 6}, ptr=30, pte=10, t_end=3.0, saves=3,
                    solver="gradient-ratio")


@pytest.fixture(scope="module")
def owned(tmp_path_factory):
    """The owner's own factory-configured run, stopped half-way (resumable)."""
    return gflow.run(FACTORY.replace(max_steps=40), tmp_path_factory.mktemp("own") / "own.h5", progress=False).path


def _hostile(owned, tmp_path, name="hostile.h5", **changes):
    """A copy of ``owned`` whose config names other code: what an attacker edits with h5py."""
    path = tmp_path / name
    shutil.copy(owned, path)
    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg.update(changes)
        f.attrs["config"] = json.dumps(cfg)
    return path


@pytest.fixture
def pwned(tmp_path, monkeypatch):
    """A sentinel path that a called reference would create, and a module in the working
    directory whose import would create another."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sideeffect_mod.py").write_text("open('imported', 'w').close()\ndef nothing(a, y):\n    return a\n")
    yield tmp_path / "pwned"
    assert not (tmp_path / "pwned").exists(), "a reference stored in the file was called"
    assert not (tmp_path / "imported").exists() and "sideeffect_mod" not in sys.modules, "a module named by the file was imported"


ATTACKS = {
    "model": lambda sentinel: {"model": "os:system", "model_args": {"command": f"touch {sentinel}"}},
    "data": lambda sentinel: {"data": "os:system", "data_args": {"command": f"touch {sentinel}"}, "ptr": 1000,
                              "pte": 500},
    "loss": lambda sentinel: {"loss": "sideeffect_mod:nothing"},
    "rmtree": lambda sentinel: {"model": "shutil:rmtree", "model_args": {"path": str(sentinel.parent / "victim")}},
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_files_references_are_never_called_by_python_analyses_without_trust_code(owned, tmp_path, pwned, attack):
    (tmp_path / "victim").mkdir()
    path = _hostile(owned, tmp_path, **ATTACKS[attack](pwned))
    traj = gflow.open(path)
    assert traj.status == "stopped" and len(traj) > 0  # everything stored reads without any code
    reference = json.loads(h5py.File(path, "r").attrs["config"])[attack if attack != "rmtree" else "model"]
    for analysis in (traj.kernel_change, lambda: traj.t1("linearization"), lambda: traj.at(0.0, exact=True),
                     lambda: gflow.resume(path), lambda: gflow.compare(owned, path)):
        with pytest.raises(UntrustedCode, match=f"{reference!r}.* named by the file.*trust_code=True"):
            analysis()
    assert (tmp_path / "victim").is_dir()


@pytest.mark.parametrize("command", ["t1", "compare", "resume"])
def test_the_cli_refuses_a_files_references_in_one_line_naming_them_and_the_flag(owned, tmp_path, pwned, capsys, command):
    path = _hostile(owned, tmp_path, **ATTACKS["model"](pwned))
    before = path.read_bytes()
    argv = {"t1": ["t1", path], "compare": ["compare", owned, path], "resume": ["run", "--resume", path]}[command]
    code, out, err = _cli(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    assert "'os:system'" in err and "--trust-code" in err and "touch" in err
    assert path.read_bytes() == before  # resume refused before it touched the file


def test_the_owners_factory_run_resumes_and_analyses_with_trust_code(owned, tmp_path, capsys):
    path = tmp_path / "mine.h5"
    shutil.copy(owned, path)
    with pytest.raises(UntrustedCode):
        gflow.open(path).t1("linearization")
    code, out, err = _cli(capsys, "run", "--resume", path, "--max-steps", "100000", "--trust-code")
    assert code == 0 and "status       finished" in out, err
    traj = gflow.open(path, trust_code=True)
    assert np.isfinite(traj.t1("curvature")) and traj.kernel_change()[1][0] == 0.0
    code, out, err = _cli(capsys, "t1", path, "--trust-code")
    assert code == 0 and "t1_linearization" in out, err
    assert gflow.compare(path, path, trust_code=True)["distance"].max() == 0.0


def test_built_in_networks_and_python_objects_need_no_opt_in(tmp_path):
    cfg = RunConfig(ptr=20, pte=5, width=5, depth=1, t_end=1.0, saves=2, solver="gradient-ratio")
    built_in = gflow.run(cfg, tmp_path / "b.h5", progress=False)
    times, gap = gflow.open(built_in.path).linearization_gap()  # rebuilt from the file, nothing refused
    assert len(gap) == len(built_in) and gap[-1] > 0
    from tests.gflow.usercode import mlp, parity_digits

    data, net = parity_digits(20, 5), mlp(width=4)
    objects = gflow.run(cfg.replace(width=100, depth=3), tmp_path / "o.h5", model=net, data=data, progress=False)
    again = gflow.open(objects.path, model=net, data=data)
    assert np.array_equal(again.at(float(again.save_times[-1]), exact=True).f_train, objects.outputs(-1))


def test_a_reference_from_a_file_is_refused_before_any_import(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "import_marker_mod.py").write_text("open('imported', 'w').close()\ndef f():\n    return 1\n")
    with pytest.raises(UntrustedCode, match="import_marker_mod:f"):
        resolve("loss", "import_marker_mod:f", file=tmp_path / "x.h5")
    assert not (tmp_path / "imported").exists()
    assert resolve("loss", "import_marker_mod:f", file=tmp_path / "x.h5", trust_code=True)() == 1  # on the user's word
    assert (tmp_path / "imported").exists()


def test_user_code_that_exits_is_one_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exits_mod.py").write_text("import sys\ndef factory():\n    sys.exit(0)\n")
    (tmp_path / "exits_at_import_mod.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(GflowError, match="SystemExit.0.: user code tried to end the process"):
        call("model", "exits_mod:factory", {})
    with pytest.raises(GflowError, match="cannot import module 'exits_at_import_mod' .SystemExit.3."):
        resolve("model", "exits_at_import_mod:f")
