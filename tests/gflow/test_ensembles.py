"""Ensembles (gflow.ensembles): K members, one file each, read as a sweep over seed."""

import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import gflow
from gflow import ConfigError, GflowError, RunConfig
from gflow.catalog import catalog
from gflow.cli import main
from gflow.ensembles import resume_ensemble, run_ensemble

BASE = RunConfig(ptr=40, pte=20, width=10, t_end=5.0, saves=4, kernel_n=6, kernel_every=2)


def test_each_member_is_bitwise_its_single_run_and_the_catalog_equals_runs_made_one_by_one(tmp_path):
    results = run_ensemble(BASE.replace(ensemble=3, seed=5), tmp_path / "ens")
    assert [r["status"] for r in results] == ["finished"] * 3
    alone = tmp_path / "alone"
    alone.mkdir()
    for seed in (5, 6, 7):
        gflow.run(BASE.replace(seed=seed), alone / f"s{seed}.h5", progress=False)
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


def test_a_failing_member_fails_alone(tmp_path):
    cfg = BASE.replace(model="tests.gflow.usercode:nan_for_seed", model_args={"bad": 1}, width=100, kernel_n=0,
                       ensemble=3)
    results = run_ensemble(cfg, tmp_path / "ens")
    assert [r["status"] for r in results] == ["finished", "failed", "finished"]
    assert results[1]["reason"]  # the member's own failure, recorded
    table = catalog(tmp_path / "ens")
    assert sorted(table["status"]) == ["failed", "finished", "finished"]


def test_sigkill_then_resume_of_the_directory_finishes_every_member_bitwise(tmp_path):
    out = tmp_path / "ens"
    slow = ["--ptr", "300", "--pte", "50", "--width", "50", "--t-end", "300", "--saves", "10", "--solver",
            "gradient-ratio", "--ensemble", "3", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "gflow.cli", "run", *slow], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    start = time.time()
    while time.time() - start < 120 and len(list(out.glob("*.h5"))) < 2:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    assert len(list(out.glob("*.h5"))) >= 1
    code = subprocess.run([sys.executable, "-m", "gflow.cli", "run", "--resume", str(out)], capture_output=True,
                          text=True, timeout=600)
    assert code.returncode == 0, code.stderr
    assert "3 runs: 3 finished" in code.stdout
    reference = tmp_path / "ref"
    main(["run", *slow[:-1], str(reference)])
    for path in sorted(out.glob("*.h5")):
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
