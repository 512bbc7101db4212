"""The examples run (at smaller sizes), so they never rot."""

import subprocess
import sys
from pathlib import Path

import pytest

import gflow
from gflow.sweep import Sweep, run_sweep

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["mlp_custom_loss.py", "attention.py"])
def test_python_examples_run_and_report_both_regimes(script, tmp_path):
    proc = subprocess.run([sys.executable, f"examples/{script}", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[1:3]]
    assert [r[0] for r in rows] == ["0.1", "10"]
    for path in tmp_path.glob("*.h5"):
        assert gflow.open(path).status == "finished"
    assert len(list(tmp_path.glob("*.h5"))) == 2


def test_the_residual_cnn_sweep_config_runs_two_seeds(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's references import from the repository root
    sweep = Sweep.load(ROOT / "examples" / "residual_cnn.toml")
    small = {**sweep.base, "data_args": {"n_train": 40, "n_test": 20, "side": 7}, "t_end": 0.5, "saves": 3,
             "kernel_n": 10, "model_args": {"channels": 4, "blocks": 1, "classes": 10}}
    results = run_sweep(Sweep(small, sweep.grid), tmp_path, workers=2, progress=False)
    assert [r["status"] for r in results] == ["finished", "finished"]
    table = gflow.catalog(tmp_path)
    assert sorted(table["seed"]) == [0, 1] and (table["kernel_change"] > 0).all()
    traj = gflow.open(tmp_path / table["file"].iloc[0])
    assert traj.outputs(-1).shape == (40, 10) and traj.sources["model"]["class"] == "examples.residual_cnn.ResidualCNN"


@pytest.mark.slow
def test_user_model_figures_draw_every_kind_with_and_without_a_width(tmp_path):
    from gflow.catalog import catalog
    from gflow.plots import KINDS

    proc = subprocess.run([sys.executable, "examples/user_model_figures.py", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr
    drawn = {p.name for p in (tmp_path / "figures").glob("*.png")}
    assert {f"user-{kind}.png" for kind in KINDS} <= drawn
    assert {"user-phase-no-width.png", "user-ensemble-no-width.png", "user-sharpness-dynamics.png"} <= drawn
    assert set(catalog(tmp_path / "widths")["width"]) == {8, 16}
    assert catalog(tmp_path / "no-width")["width"].isna().all()
