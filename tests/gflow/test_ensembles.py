"""Ensembles (gflow.ensembles): K members, one file each, read as a sweep over seed."""

import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

import gflow
from gflow import ConfigError, GflowError, RunConfig
from gflow.catalog import catalog
from gflow.cli import main
from gflow.ensembles import one_by_one, resume_ensemble, run_ensemble
from gflow.errors import UntrustedCode

BASE = RunConfig(ptr=40, pte=20, width=10, t_end=5.0, saves=4, kernel_n=6, kernel_every=2)


def _gflow(args: list[str], threads: int) -> subprocess.Popen:
    """The CLI in a fresh process whose default torch thread count is ``threads``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen([sys.executable, "-m", "gflow.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _final_f(path) -> tuple[np.ndarray, int]:
    traj = gflow.open(path)
    return traj.read("saves/f_train")[-1], int(traj.saves["evals"].iloc[-1])


CASES = {
    "alpha 1e-2": BASE.replace(alpha=1e-2, t_end=200.0),
    "alpha 1": BASE.replace(t_end=20.0),
    "alpha 1e2": BASE.replace(alpha=1e2, t_end=20.0),
    "momentum": BASE.replace(flow="momentum", tau=2.0, t_end=20.0),
    "user factory": RunConfig(ptr=40, pte=20, t_end=20.0, saves=4, model="tests.gflow.usercode:mlp",
                              model_args={"width": 12}),
    "float32": BASE.replace(dtype="float32", atol=1e-5, t_end=20.0),
}


@pytest.mark.parametrize("case", CASES)
def test_each_batched_member_reaches_its_single_runs_f_within_the_methods_accuracy_at_the_same_cost(tmp_path, case):
    cfg = CASES[case].replace(kernel_n=0, ensemble_eval="vmap")
    assert one_by_one(cfg) is None  # integrated together
    results = run_ensemble(cfg.replace(ensemble=3), tmp_path / "ens")
    assert [r["status"] for r in results] == ["finished"] * 3
    table = catalog(tmp_path / "ens")
    for seed in range(3):
        member, member_evals = _final_f(tmp_path / "ens" / table.loc[table["seed"] == seed, "file"].item())
        gflow.run(cfg.replace(seed=seed), tmp_path / f"alone{seed}.h5", progress=False)
        alone, alone_evals = _final_f(tmp_path / f"alone{seed}.h5")
        gflow.run(cfg.replace(seed=seed, dtype="float64", solver="dopri5", rtol=1e-11, atol=1e-13),
                  tmp_path / f"tight{seed}.h5", progress=False)
        tight, _ = _final_f(tmp_path / f"tight{seed}.h5")
        own_error = np.linalg.norm(alone - tight)
        assert not np.array_equal(member, alone) or cfg.dtype == "float32"  # the batched evaluation is its own
        assert np.linalg.norm(member - alone) <= 3 * own_error, (case, seed)
        assert abs(member_evals - alone_evals) <= 0.1 * alone_evals, (case, seed, member_evals, alone_evals)


def test_the_catalog_of_a_vectorised_ensemble_equals_runs_made_one_by_one_to_the_methods_accuracy(tmp_path):
    cfg = BASE.replace(ensemble=3, seed=5, ensemble_eval="vmap")
    run_ensemble(cfg, tmp_path / "ens")
    (tmp_path / "alone").mkdir()
    for seed in (5, 6, 7):
        gflow.run(cfg.replace(seed=seed, ensemble=1), tmp_path / "alone" / f"s{seed}.h5", progress=False)
    ens, one = catalog(tmp_path / "ens"), catalog(tmp_path / "alone")
    assert list(ens.columns) == list(one.columns) and len(one) == 3
    numeric = [c for c in ens.columns if c not in ("file", "wall") and pd.api.types.is_numeric_dtype(ens[c])]
    a, b = (t.sort_values("seed").reset_index(drop=True) for t in (ens, one))
    pd.testing.assert_frame_equal(a.drop(columns=numeric + ["file", "wall"]), b.drop(columns=numeric + ["file", "wall"]))
    pd.testing.assert_frame_equal(a[numeric], b[numeric], rtol=1e-6)
    pd.testing.assert_frame_equal(gflow.ensemble(tmp_path / "ens"), gflow.ensemble(tmp_path / "alone"), rtol=1e-6)


@pytest.mark.parametrize("cfg", [BASE.replace(solver="gradient-ratio"), BASE],
                         ids=["paper stepper", "cpu default"])
def test_members_one_by_one_are_bitwise_their_single_runs_and_the_catalog_equals_runs_made_one_by_one(tmp_path, cfg):
    cfg = cfg.replace(ensemble=3, seed=5)
    assert one_by_one(cfg)
    results = run_ensemble(cfg, tmp_path / "ens")
    assert [r["status"] for r in results] == ["finished"] * 3
    alone = tmp_path / "alone"
    alone.mkdir()
    for seed in (5, 6, 7):
        gflow.run(cfg.replace(seed=seed, ensemble=1), alone / f"s{seed}.h5", progress=False)
    ens, one = catalog(tmp_path / "ens"), catalog(alone)
    assert list(ens.columns) == list(one.columns) and sorted(ens["seed"]) == [5, 6, 7]
    for seed in (5, 6, 7):
        a = gflow.open(tmp_path / "ens" / ens.loc[ens["seed"] == seed, "file"].item())
        b = gflow.open(alone / f"s{seed}.h5")
        assert np.array_equal(a.read("saves/f_train"), b.read("saves/f_train"))
        assert a.config == b.config and a.config.ensemble == 1
    columns = [c for c in ens.columns if c not in ("file", "wall")]
    pd.testing.assert_frame_equal(ens.sort_values("seed")[columns].reset_index(drop=True),
                                  one.sort_values("seed")[columns].reset_index(drop=True))
    pd.testing.assert_frame_equal(gflow.ensemble(tmp_path / "ens"), gflow.ensemble(alone))


def test_members_one_by_one_share_one_thread_count_whatever_load_the_earlier_ones_made(tmp_path, monkeypatch):
    from gflow.store import TrajectoryFile

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)  # two cores
    # idle when the ensemble starts; then as loaded as the first members' own work leaves
    # the 1-minute load average for the next ones
    loads = iter([0.0] + [2.0] * 100)
    monkeypatch.setattr(os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    results = run_ensemble(BASE.replace(ensemble=3, kernel_n=0, ensemble_eval="sequential"), tmp_path / "ens")
    assert [r["status"] for r in results] == ["finished"] * 3
    assert [TrajectoryFile(p).threads for p in sorted((tmp_path / "ens").glob("*.h5"))] == [2, 2, 2]


@pytest.mark.parametrize("how", ["vmap", "sequential"])
def test_a_failing_member_fails_alone(tmp_path, how):
    cfg = BASE.replace(model="tests.gflow.usercode:nan_for_seed", model_args={"bad": 1}, width=100, kernel_n=0,
                       ensemble=3, ensemble_eval=how)
    results = run_ensemble(cfg, tmp_path / "ens")
    assert [r["status"] for r in results] == ["finished", "failed", "finished"]
    assert results[1]["reason"]  # the member's own failure, recorded
    table = catalog(tmp_path / "ens")
    assert sorted(table["status"]) == ["failed", "finished", "finished"]


@pytest.mark.parametrize("method, wait", [(["--solver", "gradient-ratio"], 0.5),
                                          (["--ensemble-eval", "vmap", "--t-end", "3000"], 3.0)],
                         ids=["one by one", "vmap"])
def test_sigkill_then_resume_of_the_directory_finishes_every_member_bitwise(tmp_path, method, wait):
    out = tmp_path / "ens"
    slow = ["--ptr", "300", "--pte", "50", "--width", "50", "--t-end", "300", "--saves", "10", *method,
            "--ensemble", "3", "--out", str(out)]
    proc = _gflow(["run", *slow], threads=1)
    start = time.time()
    while time.time() - start < 120 and len(list(out.glob("*.h5"))) < 2:
        time.sleep(0.1)
    time.sleep(wait)  # members integrate together: all have saves by then, none has finished
    proc.kill()
    proc.wait()
    assert len(list(out.glob("*.h5"))) >= 1
    code = _gflow(["run", "--resume", str(out)], threads=2)  # resumes with the threads the files record
    stdout, stderr = code.communicate(timeout=600)
    assert code.returncode == 0, stderr
    assert "3 runs: 3 finished" in stdout and " resume " in stdout  # killed members were resumed
    reference = tmp_path / "ref"
    assert _gflow(["run", *slow[:-1], str(reference)], threads=1).wait(timeout=600) == 0
    for path in sorted(out.glob("*.h5")):
        a, b = gflow.open(path), gflow.open(reference / path.name)
        assert a.status == "finished" and np.array_equal(a.read("saves/f_train"), b.read("saves/f_train"))


def test_sigterm_stops_every_vectorised_member_and_resume_finishes_them_bitwise(tmp_path):
    import signal

    out = tmp_path / "ens"
    slow = ["--ptr", "300", "--pte", "50", "--width", "50", "--t-end", "3000", "--saves", "10",
            "--ensemble-eval", "vmap", "--ensemble", "3", "--out", str(out)]
    proc = _gflow(["run", *slow], threads=1)
    start = time.time()
    while time.time() - start < 120 and len(list(out.glob("*.h5"))) < 3:
        time.sleep(0.1)
    time.sleep(3.0)  # members integrate together: all have saves by then, none has finished
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    members = sorted(out.glob("*.h5"))
    assert len(members) == 3 and all(gflow.open(p).status == "stopped" for p in members)
    # Resumed at another default thread count, the members would round their batched
    # products differently (measured: one save changed); they resume with the recorded one.
    code = _gflow(["run", "--resume", str(out)], threads=2)
    stdout, stderr = code.communicate(timeout=600)
    assert code.returncode == 0, stderr
    assert "3 runs: 3 finished" in stdout
    reference = tmp_path / "ref"
    assert _gflow(["run", *slow[:-1], str(reference)], threads=1).wait(timeout=600) == 0
    for path in members:
        a, b = gflow.open(path), gflow.open(reference / path.name)
        assert a.status == "finished" and np.array_equal(a.read("saves/f_train"), b.read("saves/f_train"))


def test_ensembles_need_the_network_from_the_config_and_a_directory(tmp_path, capsys):
    with pytest.raises(ConfigError, match="run\\(\\) integrates one network"):
        gflow.run(BASE.replace(ensemble=2), tmp_path / "x.h5")
    with pytest.raises(ConfigError, match="ensemble = 0: must be >= 1"):
        BASE.replace(ensemble=0)
    with pytest.raises(GflowError, match="a sweep's ensembles are its seeds"):
        gflow.Sweep(base={"ensemble": 2}, grid={"alpha": [1.0]}).runs()
    assert main(["run", "--ensemble", "2"]) == 2
    assert "give --out DIR" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(GflowError, match="is not a directory"):
        run_ensemble(BASE.replace(ensemble=2), tmp_path / "file")
    with pytest.raises(GflowError, match="nor an ensemble directory"):
        resume_ensemble(tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_ensemble_on_a_device_this_machine_lacks_is_one_error_and_makes_no_directory(tmp_path, capsys):
    assert main(["run", "--ptr", "40", "--pte", "10", "--width", "8", "--device", "cuda", "--ensemble", "3",
                 "--out", str(tmp_path / "ens")]) == 2
    out, err = capsys.readouterr()
    assert "device = 'cuda': CUDA is not available on this machine" in err
    assert out == ""  # no "ensemble of 3 ..." header above the error
    assert not (tmp_path / "ens").exists()


def test_an_ensemble_announces_itself_once_accepted_and_before_its_members(tmp_path, capsys):
    assert main(["run", "--ptr", "40", "--pte", "10", "--width", "8", "--t-end", "2", "--saves", "2",
                 "--ensemble", "2", "--out", str(tmp_path / "ens")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ensemble of 2 (seeds 0..1) into ")
    assert [line.split()[0] for line in lines[1:3]] == ["finished", "finished"]


def test_a_round_that_raises_fails_every_member_waiting_on_it_and_none_hangs(tmp_path, monkeypatch):
    import gflow.batching

    def broken(self, flows, states):
        raise RuntimeError("the round broke")

    monkeypatch.setattr(gflow.batching.Batch, "_round", broken)
    results = run_ensemble(BASE.replace(ensemble=3, kernel_n=0, ensemble_eval="vmap"), tmp_path / "ens")
    assert [r["status"] for r in results] == ["failed"] * 3
    assert all("the round broke" in r["reason"] for r in results)


def test_resuming_a_directory_whose_manifest_names_code_needs_trust_code(tmp_path, capsys):
    cfg = RunConfig(ptr=40, pte=20, t_end=2.0, saves=2, model="tests.gflow.usercode:mlp", model_args={"width": 6},
                    ensemble=2, solver="gradient-ratio")
    run_ensemble(cfg, tmp_path / "ens")
    for path in (tmp_path / "ens").glob("*.h5"):
        path.unlink()  # the members to redo: their code would run
    with pytest.raises(UntrustedCode, match="tests.gflow.usercode:mlp"):
        resume_ensemble(tmp_path / "ens")
    assert not list((tmp_path / "ens").glob("*.h5"))
    assert main(["run", "--resume", str(tmp_path / "ens")]) == 2
    assert "--trust-code" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "ens"), "--trust-code"]) == 0
    assert len(list((tmp_path / "ens").glob("*.h5"))) == 2
