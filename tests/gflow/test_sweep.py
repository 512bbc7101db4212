"""Sweeps: grid expansion, local and Dask engines, re-running does only what is missing."""

import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest

import gflow
from gflow import GflowError
from gflow.experiments import NAMES, sweep_file
from gflow.sweep import Sweep, run_sweep

from .commands import gflow_cli as _cli

TINY = """
[base]
ptr = 40
pte = 20
t_end = 5.0
saves = 4
kernel_n = 10
kernel_every = 2

[grid]
alpha = [0.5, 2.0]
width = [6, 12]
"""


def _sweep(tmp_path, text=TINY):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return Sweep.load(path)


def test_grid_forms_expand_to_the_product_in_order(tmp_path):
    sweep = _sweep(tmp_path, """
[base]
ptr = 40
[grid]
alpha = { log = [0.01, 100.0, 5] }
width = { lin = [10, 30, 3] }
seed = { range = [0, 4, 2] }
""")
    runs = sweep.runs()
    assert len(runs) == 5 * 3 * 2
    assert [r.alpha for r in runs[::6]] == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert sorted({r.seed for r in runs}) == [0, 2] and runs[0].ptr == 40


@pytest.mark.parametrize("text,message", [
    ("[grid]\nalpha = []", "alpha is an empty list"),
    ("[grid]\nalpha = { log = [0, 1, 3] }", "log range needs positive ends"),
    ("[grid]\nalpha = { cube = [1, 2] }", "must be a list, {log = [lo, hi, n]}"),
    ("[grid]\nalpah = [1.0]", "unknown field 'alpah'"),
    ("[grid]\nwidth = [10, 0]", "width = 0: must be >= 1"),
    ("[base]\nwidth = 5\n[grid]\nwidth = [1]", "'width' is in both [base] and [grid]"),
    ("[runs]\nx = 1", "unknown table [runs]"),
])
def test_bad_sweep_files_are_one_clear_error_before_any_run(tmp_path, text, message):
    with pytest.raises(GflowError, match=message.replace("[", r"\[").replace("{", r"\{")):
        _sweep(tmp_path, text)


def test_names_are_deterministic_readable_and_distinct(tmp_path):
    sweep = _sweep(tmp_path)
    names = [sweep.name(cfg) for cfg in sweep.runs()]
    assert len(set(names)) == 4 and names[0].startswith("alpha=0.5_width=6_")
    assert names == [_sweep(tmp_path).name(cfg) for cfg in sweep.runs()]


def test_local_sweep_completes_and_a_rerun_only_does_what_is_missing(tmp_path):
    sweep = _sweep(tmp_path)
    out = tmp_path / "runs"
    first = run_sweep(sweep, out, workers=2, progress=False)
    assert [r["status"] for r in first] == ["finished"] * 4 and {r["action"] for r in first} == {"run"}
    files = sorted(out.glob("*.h5"))
    assert len(files) == 4 and all(gflow.open(f).status == "finished" for f in files)
    # damage the record: one run killed mid-way (status running), one failed
    killed, failed = files[0], files[1]
    with h5py.File(killed, "r+") as f:
        f["run/status"][()] = b"running"
        for ds in f["saves"].values():
            ds.resize(2, axis=0)
    with h5py.File(failed, "r+") as f:
        f["run/status"][()] = b"failed"
    untouched = {f: f.stat().st_mtime_ns for f in files[2:]}
    again = {r["name"]: r for r in run_sweep(sweep, out, workers=2, progress=False)}
    assert again[killed.stem]["action"] == "resume" and again[failed.stem]["action"] == "run"
    assert all(r["status"] == "finished" for r in again.values())
    assert sum(r["action"] == "skip" for r in again.values()) == 2
    assert {f: f.stat().st_mtime_ns for f in files[2:]} == untouched
    assert failed.with_suffix(".h5.failed").exists()  # the failed file is kept for inspection
    assert "integrated by process" in failed.with_suffix(".log").read_text()


def test_dask_local_cluster_runs_every_run_to_a_complete_file(tmp_path):
    pytest.importorskip("dask.distributed")
    out = tmp_path / "dask"
    results = run_sweep(_sweep(tmp_path), out, engine="dask", workers=2, progress=False)
    assert [r["status"] for r in results] == ["finished"] * 4
    for path in out.glob("*.h5"):
        traj = gflow.open(path)
        assert traj.status == "finished" and traj.save_times[-1] == traj.config.t_end
        assert len(traj.read("kernel/t")) >= 2


def test_two_sweeps_on_one_directory_run_each_run_exactly_once(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text(TINY.replace("t_end = 5.0", "t_end = 300.0").replace("saves = 4", "saves = 30"))
    out = tmp_path / "shared"
    cmd = [sys.executable, "-m", "gflow.cli", "sweep", str(path), "--out", str(out), "--workers", "2"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    time.sleep(1.0)
    procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all("Traceback" not in err for _, err in outputs)
    logs = sorted(out.glob("*.log"))
    assert len(logs) == 4
    for log in logs:
        assert log.read_text().count("integrated by process") == 1, log.read_text()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0 and "4 runs: 4 finished" in rerun.stdout


def test_shipped_experiments_are_valid_sweeps():
    for name in NAMES:
        runs = Sweep.load(sweep_file(name)).runs()
        assert all(r.stop_margin == 1.0 and r.kernel_n > 0 for r in runs)
        alphas = sorted({r.alpha for r in runs})
        assert alphas[0] <= 1e-2 and alphas[-1] >= 1e2  # both regimes: feature and lazy
        assert len({r.seed for r in runs}) >= 2  # seeds, for ensemble averages
        if name == "cnn":
            assert all(r.arch == "cnn" and r.dataset == "fashion-mnist" for r in runs)
        else:  # phase diagrams: alpha x h x seed
            assert len(runs) >= 27 and len(alphas) >= 5 and len({r.width for r in runs}) >= 3
    with pytest.raises(GflowError, match="experiment 'cifar'"):
        sweep_file("cifar")


def test_ensemble_mean_predictor_and_fluctuations_match_a_direct_computation(tmp_path):
    from gflow.catalog import ensemble

    sweep = _sweep(tmp_path, TINY.replace("width = [6, 12]", "seed = [0, 1, 2]"))
    out = tmp_path / "ens"
    run_sweep(sweep, out, workers=2, progress=False)
    table = ensemble(out)
    assert len(table) == 2 and (table["seeds"] == 3).all()
    row = table[table["alpha"] == 2.0].iloc[0]
    trajs = [gflow.open(p) for p in sorted(out.glob("alpha=2_*.h5"))]
    f = np.stack([2.0 * (t.outputs(-1, "test") - t.read("init/f0_test")) for t in trajs])
    y = trajs[0].read("data/y_test")
    assert row["delta_F"] == pytest.approx(np.sqrt(((f - f.mean(0)) ** 2).mean()), rel=1e-12)
    assert row["ensemble_test_err"] == pytest.approx(np.mean(np.sign(f.mean(0)) != y))


def test_seeds_of_a_grid_point_run_as_one_ensemble_and_the_catalog_cannot_tell(tmp_path):
    from gflow.sweep import _groups

    text = TINY.replace("width = [6, 12]", "seed = [0, 1, 2]").replace("[base]", '[base]\nensemble_eval = "vmap"')
    sweep = _sweep(tmp_path, text)
    runs = sweep.runs()
    assert [len(g) for g in _groups(sweep, runs, tmp_path, True)] == [3, 3]  # one ensemble per alpha
    assert [len(g) for g in _groups(sweep, runs, tmp_path, False)] == [1] * 6
    cpu_default = _sweep(tmp_path, TINY.replace("width = [6, 12]", "seed = [0, 1, 2]"))
    assert [len(g) for g in _groups(cpu_default, cpu_default.runs(), tmp_path, True)] == [1] * 6  # one by one
    for grouped in (True, False):
        results = run_sweep(sweep, tmp_path / str(grouped), workers=2, progress=False, ensembles=grouped)
        assert [r["status"] for r in results] == ["finished"] * 6
    a, b = gflow.catalog(tmp_path / "True"), gflow.catalog(tmp_path / "False")
    assert list(a["file"]) == list(b["file"]) and list(a.columns) == list(b.columns)
    numeric = [c for c in a.columns if c != "wall" and pd.api.types.is_numeric_dtype(a[c])]
    assert np.allclose(a[numeric].to_numpy(float), b[numeric].to_numpy(float), rtol=1e-6, equal_nan=True)
    assert np.allclose(gflow.ensemble(tmp_path / "True")["delta_F"], gflow.ensemble(tmp_path / "False")["delta_F"],
                       rtol=1e-6)


def test_killing_the_sweep_process_stops_its_workers_runs_cleanly(tmp_path):
    import signal

    path = tmp_path / "sweep.toml"
    # tiny steps: the runs could not finish in minutes
    path.write_text(TINY.replace("t_end = 5.0", "t_end = 1e9\nmax_dgrad = 1e-12\nsolver = \"gradient-ratio\"").replace("width = [6, 12]", "width = [6]"))
    out = tmp_path / "runs"
    sweep = subprocess.Popen([sys.executable, "-m", "gflow.cli", "sweep", str(path), "--out", str(out), "--workers", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.h5"))) < 2 or any(gflow.open(f).saves.empty for f in out.glob("*.h5")):
        assert time.monotonic() < deadline, "the sweep's runs did not start"
        time.sleep(0.5)
    sweep.send_signal(signal.SIGKILL)  # the parent dies without a chance to clean up
    sweep.wait()
    deadline = time.monotonic() + 60
    while any(gflow.open(f).status == "running" for f in out.glob("*.h5")):
        assert time.monotonic() < deadline, "orphaned workers kept integrating"
        time.sleep(0.5)
    for f in out.glob("*.h5"):
        traj = gflow.open(f)
        assert traj.status == "stopped" and "SIGTERM" in traj.stop_reason
        steps = traj.summary()["step"]
        time.sleep(1.0)
        assert gflow.open(f).summary()["step"] == steps


USER_SWEEP = """
[base]
model = "tests.gflow.usercode:mlp"
data = "tests.gflow.usercode:digits"
data_args = { n_train = 40, n_test = 10, classes = 3 }
loss = "cross-entropy"
t_end = 5.0
saves = 3

[grid]
model_args.width = [6, 10]
model_args.outputs = [3]
seed = [0, 1]
"""


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_a_sweep_over_a_factory_models_arguments_runs_on_every_engine(tmp_path, engine):
    if engine == "dask":
        pytest.importorskip("dask.distributed")
    sweep = _sweep(tmp_path, USER_SWEEP)
    assert [(c.model_args["width"], c.seed) for c in sweep.runs()] == [(6, 0), (6, 1), (10, 0), (10, 1)]
    assert sweep.name(sweep.runs()[0]).startswith("model_args.width=6_model_args.outputs=3_seed=0_")
    results = run_sweep(sweep, tmp_path / "runs", engine=engine, workers=2, progress=False)
    assert [r["status"] for r in results] == ["finished"] * 4
    table = gflow.catalog(tmp_path / "runs")
    assert sorted(table["model_args.width"]) == [6, 6, 10, 10]
    w0 = {(r["model_args.width"], r["seed"]): gflow.open(tmp_path / "runs" / r["file"]).read("init/w0")
          for _, r in table.iterrows()}
    assert w0[(6, 0)].shape == (6 * 64 + 6 + 12 + 3 * 6 + 3,) and not np.array_equal(w0[(6, 0)], w0[(6, 1)])
    again = run_sweep(sweep, tmp_path / "runs", engine="local", workers=2, progress=False)
    assert [r["action"] for r in again] == ["skip"] * 4


# --- sweeps that lose nothing ----------------------------------------------------------------------

def _dies_once(tmp_path, method: str, seeds: list[int]):
    """A sweep over seeds whose model kills its worker process the first time it is built;
    the flag file that says it has."""
    flag = tmp_path / "killed-once"
    (tmp_path / "s.toml").write_text(f"""
[base]
ptr = 30
pte = 10
t_end = 2.0
saves = 3
{method}
model = "tests.gflow.usercode:dies_once"
model_args = {{ flag = "{flag}" }}

[grid]
seed = {seeds}
""")
    return flag


def test_a_killed_worker_is_reported_lost_and_the_sweep_goes_on_then_finishes_when_run_again(tmp_path, capsys):
    flag = _dies_once(tmp_path, 'solver = "gradient-ratio"', [0, 1, 2, 3])
    runs = tmp_path / "runs"
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", runs, "--workers", "1")
    assert code == 1 and flag.exists(), err
    assert "Traceback" not in err and "BrokenProcessPool" not in out + err
    assert "4 runs: 3 finished, 1 lost" in out and "its worker process died" in out
    table = gflow.catalog(runs)
    assert sorted(table["status"]) == ["finished", "finished", "finished", "lost"]
    lost = table[table["status"] == "lost"].iloc[0]
    assert lost["file"].endswith(".h5 (no file)") and lost["seed"] == int(lost["seed"])  # its config is listed too
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", runs, "--workers", "1")
    assert code == 0 and "4 runs: 4 finished" in out, err
    assert sorted(gflow.catalog(runs)["status"]) == ["finished"] * 4


def test_a_worker_killed_in_a_grouped_ensemble_loses_its_members_and_a_rerun_finishes_them(tmp_path, capsys):
    flag = _dies_once(tmp_path, 'ensemble_eval = "vmap"', [0, 1, 2])  # the seeds: one ensemble, one task
    runs = tmp_path / "runs"
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", runs, "--workers", "1")
    assert code == 1 and flag.exists(), err
    assert "Traceback" not in err and "BrokenProcessPool" not in out + err
    assert "its worker process died" in out
    # The member whose model killed the group's worker is lost; those it had not started
    # yet went to a fresh worker (which members had started depends on their threads).
    statuses = list(gflow.catalog(runs)["status"])
    assert "lost" in statuses and set(statuses) <= {"lost", "finished"} and len(statuses) == 3
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", runs, "--workers", "1")
    assert code == 0 and "3 runs: 3 finished" in out, err
    table = gflow.catalog(runs)
    assert sorted(table["status"]) == ["finished"] * 3 and sorted(table["seed"]) == [0, 1, 2]


def test_a_run_that_fails_before_its_file_exists_is_on_record(tmp_path, capsys):
    (tmp_path / "s.toml").write_text("""
[base]
ptr = 30
pte = 10
t_end = 1.0
saves = 2
model = "tests.gflow.usercode:raises"

[grid]
seed = [0, 1]
""")
    runs = tmp_path / "runs"
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", runs, "--workers", "1")
    assert code == 1 and "2 runs: 2 failed" in out and "this loader is broken" in out, err
    assert not list(runs.glob("*.h5"))
    code, out, err = _cli(capsys, "query", runs, "--columns", "file", "seed", "status", "stop_reason", "--format", "csv")
    assert code == 0 and out.count(",failed,") == 2 and "(no file)" in out and "this loader is broken" in out, err


def test_run_names_are_sanitised_and_bounded(tmp_path):
    sweep = _sweep(tmp_path, """
[base]
ptr = 30
pte = 10
t_end = 1.0
saves = 2
model = "tests.gflow.usercode:mlp"
model_args = { width = 4 }

[grid]
data_seed = [0, 1]
model_args.note = ["../../escape/x", "y%s" ]
""".replace("%s", "z" * 300))
    names = [sweep.name(cfg) for cfg in sweep.runs()]
    assert len(set(names)) == 4
    assert all("/" not in n and len(n.encode()) <= 200 for n in names), names


def test_a_grid_too_large_is_refused_before_it_is_expanded(tmp_path, capsys):
    (tmp_path / "s.toml").write_text("[grid]\nalpha = { log = [0.01, 100.0, 1000000000] }\n")
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", tmp_path / "runs")
    assert code == 2 and err.count("\n") == 1 and "at most 100000 values" in err, err
    (tmp_path / "s.toml").write_text("[grid]\nseed = { range = [0, 1000] }\nalpha = { lin = [1.0, 2.0, 1000] }\n")
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", tmp_path / "runs")
    assert code == 2 and "expands to 1000000 runs" in err, err


@pytest.mark.parametrize("engine,module,message", [
    ("dask", "dask.distributed", "--engine dask needs Dask distributed: pip install 'gflow[dask]'"),
    ("slurm", "dask_jobqueue", "--engine slurm needs dask-jobqueue: pip install 'gflow[cluster]'")])
def test_an_engine_whose_package_is_missing_is_one_line_and_makes_nothing(tmp_path, capsys, monkeypatch, engine,
                                                                          module, message):
    monkeypatch.setitem(sys.modules, module, None)  # its import fails, as where it is not installed
    (tmp_path / "s.toml").write_text(TINY)
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", tmp_path / "runs", "--engine", engine)
    assert code == 2 and err == f"gflow: error: {message}\n", err
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_scheduler_is_one_line_within_its_bound(tmp_path, capsys):
    pytest.importorskip("dask.distributed")
    (tmp_path / "s.toml").write_text(TINY)
    start = time.monotonic()
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", tmp_path / "runs", "--engine", "dask",
                          "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2 and err.count("\n") == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err, err
    assert time.monotonic() - start < 30


def test_a_read_only_or_unnameable_output_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(TINY)
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", "/proc/self")
    assert code == 2 and err.count("\n") == 1 and "cannot" in err and "/proc/self" in err, err
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", tmp_path / ("r" * 300))
    assert code == 2 and err.count("\n") == 1 and "File name too long" in err, err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_a_local_sweep_on_a_device_this_machine_lacks_is_one_line_and_makes_nothing(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(TINY.replace("[grid]", 'device = "cuda"\n\n[grid]'))
    code, out, err = _cli(capsys, "sweep", tmp_path / "s.toml", "--out", tmp_path / "runs")
    assert code == 2 and err.count("\n") == 1 and "device = 'cuda': CUDA is not available on this machine" in err, err
    assert not (tmp_path / "runs").exists()


def test_a_damaged_manifest_is_one_row_and_never_hides_the_runs(tmp_path):
    traj = gflow.run(gflow.RunConfig(ptr=20, pte=5, width=4, t_end=1.0, saves=2), tmp_path / "a.h5", progress=False)
    (tmp_path / "gflow-sweep.json").write_text("[" * 100_000)
    table = gflow.catalog(tmp_path)
    assert list(table["file"]) == [traj.path.name, "gflow-sweep.json"]
    assert list(table["status"]) == ["finished", "unreadable"]


def test_a_script_without_a_main_guard_is_refused_in_one_line(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text("import gflow\n"
                      "sweep = gflow.Sweep(base={'ptr': 30, 'pte': 10, 't_end': 2.0, 'saves': 2, 'width': 8},\n"
                      "                    grid={'alpha': [0.5, 2.0]})\n"
                      "gflow.run_sweep(sweep, 'out', workers=2, progress=False)\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert 'must call it under `if __name__ == "__main__":`' in proc.stderr
    assert "BrokenProcessPool" not in proc.stderr and len(proc.stderr.splitlines()) < 20
    assert not list((tmp_path / "out").glob("*.h5"))


def _local_job_queue(**kwargs):
    """dask-jobqueue's LocalCluster: jobs run as local processes through the same machinery
    (job scripts, scaling by jobs, worker processes per job) a SLURM or PBS cluster uses."""
    from dask_jobqueue.local import LocalCluster

    return LocalCluster(cores=kwargs["cores"], processes=kwargs["processes"], memory=kwargs["memory"])


def test_a_batch_system_engine_queues_jobs_through_dask_jobqueue_and_runs_every_run(tmp_path, monkeypatch):
    dask_jobqueue = pytest.importorskip("dask_jobqueue")
    monkeypatch.setattr(dask_jobqueue, "SLURMCluster", _local_job_queue)  # no SLURM here: the jobs run locally
    out = tmp_path / "slurm"
    results = run_sweep(_sweep(tmp_path), out, engine="slurm", jobs=gflow.sweep.Jobs(jobs=2, cores=1, memory="2GB"),
                        progress=False)
    assert [r["status"] for r in results] == ["finished"] * 4
    alone = tmp_path / "alone"
    run_sweep(_sweep(tmp_path), alone, workers=1, progress=False)
    for path in out.glob("*.h5"):
        assert np.array_equal(gflow.open(path).read("saves/f_train"), gflow.open(alone / path.name).read("saves/f_train"))


def test_a_dask_jobqueue_cluster_of_your_own_runs_the_sweep(tmp_path):
    """The recipe of docs/CLUSTERS.md: build the cluster with your site's options, scale it,
    pass it; the sweep leaves it to you (it is not closed)."""
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue.local import LocalCluster

    with LocalCluster(cores=2, processes=2, memory="4GB") as cluster:
        cluster.scale(jobs=1)
        results = run_sweep(_sweep(tmp_path), tmp_path / "own", engine="dask", cluster=cluster, progress=False)
        assert [r["status"] for r in results] == ["finished"] * 4
        assert cluster.status.name == "running"


def test_job_flags_print_the_job_script_and_need_a_batch_engine(tmp_path, capsys):
    pytest.importorskip("dask_jobqueue")
    from gflow.cli import main

    path = tmp_path / "sweep.toml"
    path.write_text(TINY)
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--engine", "pbs", "--jobs", "3", "--job-cores", "4",
                 "--job-memory", "8GB", "--walltime", "02:00:00", "--queue", "long", "--job-script"]) == 0
    script = capsys.readouterr().out
    assert "#PBS -q long" in script and "walltime=02:00:00" in script and "--nworkers 4" in script
    assert not (tmp_path / "o").exists()
    assert main(["sweep", str(path), "--out", str(tmp_path / "o"), "--jobs", "3"]) == 2
    assert "give --engine one of slurm, pbs, sge, lsf" in capsys.readouterr().err
