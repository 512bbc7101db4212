"""The benchmarks behind `gflow bench`: work-precision of every method, cost per evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import gflow
from gflow.bench import check_selection, default_variants, overhead, peak_memory
from gflow.cli import main
from gflow.limits import resident_bytes

from .configs import TINY

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_runs_end_to_end_on_a_tiny_problem(tmp_path, capsys):
    assert main(["bench", "solvers", "--quick", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "solvers.csv")
    assert {"method", "tolerance", "evals", "wall_s", "per_eval_over_raw", "error"} <= set(table.columns)
    assert (table["status"] == "finished").all() and (table["error"] < 0.1).all()
    assert (tmp_path / "work_precision.png").stat().st_size > 10_000
    assert "dopri5" in capsys.readouterr().out
    markdown = (tmp_path / "solvers.md").read_text()
    methods = table.groupby(["problem", "method"]).ngroups
    # Two tables: evaluations to reach each accuracy (a row per method), and a row per run.
    assert markdown.count("\n| ") == (methods + 2) + (len(table) + 2)
    # Interpolating methods at the default saves cost what one save costs: the ratio is measured.
    assert (table.loc[table["method"] == "exponential", "saves_cost"] == 1.0).all()


def test_benchmark_runs_only_the_selected_methods_and_tolerances(tmp_path):
    args = ["bench", "solvers", "--quick", "--out", str(tmp_path), "--methods", "chebyshev", "gradient-ratio (paper)"]
    assert main(args) == 0
    table = pd.read_csv(tmp_path / "solvers.csv")
    assert sorted(table["method"]) == ["chebyshev", "gradient-ratio (paper)"]


def test_selection_matches_labels_or_solver_names():
    variants = default_variants(momentum=False)
    check_selection(variants, ["gradient-ratio", "dopri5", "exponential"], [1e-3, 1e-4])


@pytest.mark.parametrize("methods, tolerances, message", [
    (["rk45"], None, "unknown benchmark method 'rk45'; known: gradient-ratio (paper)"),
    (None, [3e-3], "no benchmark variant at tolerance 0.003; known: 1e-06, 1e-05, 0.0001, 0.001, 0.01, 0.1"),
])
def test_selection_of_nothing_is_rejected_naming_what_exists(methods, tolerances, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_selection(default_variants(momentum=False), methods, tolerances)


def test_bad_selection_exits_with_one_line_before_running_anything(tmp_path, capsys):
    assert main(["bench", "solvers", "--quick", "--out", str(tmp_path / "out"), "--methods", "rk45"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gflow: error: unknown benchmark method 'rk45'") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_overhead_benchmark_times_the_writer_inside_a_run_equal_to_gflow_run(tmp_path):
    numbers = overhead(TINY, repeats=1)
    plain = gflow.run(TINY, tmp_path / "plain.h5", progress=False)
    assert numbers["evals"] == plain.summary()["evals"]
    # The writer does real work (a file per save) but is a part of the run, not all of it.
    assert 0 < numbers["storage_share"] < 1
    shares = {k: v for k, v in numbers.items() if k.startswith("share_")}
    plain_numbers = {k: v for k, v in numbers.items() if k not in shares}
    assert all(np.isfinite(v) and v > 0 for v in plain_numbers.values()), numbers
    assert sum(shares.values()) == pytest.approx(1.0) and min(shares.values()) > -1e-3
    assert shares["share_storage"] == numbers["storage_share"] and shares["share_evaluations"] > 0
    # Peak memory of the stored run against a process of raw passes, both fresh processes.
    assert numbers["peak_over_raw"] == pytest.approx(numbers["run_peak_mb"] / numbers["raw_peak_mb"])
    assert numbers["raw_peak_mb"] > 50  # torch alone is more: a real measurement, not a default


def test_peak_memory_is_each_fresh_process_own_not_the_forking_parents():
    """getrusage's ru_maxrss survives fork and exec: a child of a large parent would report the
    parent's size. VmHWM starts afresh with the new program."""
    ballast = torch.ones(400 * 2**20 // 8, dtype=torch.float64)
    peaks = peak_memory(TINY)
    assert peaks["raw_peak_mb"] < resident_bytes() / 2**20 - 200
    assert ballast.sum() > 0


def test_overhead_parts_of_the_exponential_method_are_exclusive_and_sum_to_the_wall_time():
    """The Krylov space's time excludes the evaluations made inside its extensions, so the
    parts add up to the run's wall time with no part counted twice."""
    numbers = overhead(TINY.replace(solver="exponential", rtol=1e-4, atol=1e-8), repeats=1)
    shares = {k: v for k, v in numbers.items() if k.startswith("share_")}
    assert {"share_evaluations", "share_krylov", "share_phi", "share_dense_output", "share_save_forwards",
            "share_storage"} <= set(shares)
    assert sum(shares.values()) == pytest.approx(1.0) and all(v > -1e-3 for v in shares.values())
    assert shares["share_evaluations"] > shares["share_krylov"]


def test_overhead_rejects_a_solver_selection(tmp_path, capsys):
    assert main(["bench", "overhead", "--quick", "--out", str(tmp_path / "o"), "--methods", "chebyshev"]) == 2
    assert "apply to `gflow bench solvers` only" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_evaluations_to_reach_read_the_pareto_front_log_linearly():
    from gflow.bench import evaluations_to_reach

    table = pd.DataFrame({"problem": "p", "method": "m", "status": "finished",
                          "evals": [100, 400, 300, 1000], "error": [1e-2, 1e-3, 5e-2, 1e-5]})
    row = evaluations_to_reach(table, (1e-1, 1e-2, 1e-3, 1e-4, 1e-6)).iloc[0]
    # 300 evals at 5e-2 is off the front (100 evals reach 1e-2): the front is 100, 400, 1000.
    assert row["0.1"] == 100 and row["0.01"] == 100 and row["0.001"] == pytest.approx(400)
    assert row["0.0001"] == pytest.approx(np.sqrt(400 * 1000))  # halfway in log error, halfway in log evals
    assert np.isnan(row["1e-06"])


def test_the_checksum_benchmark_measures_both_variants_and_writes_its_numbers(tmp_path):
    (tmp_path / "tiny.toml").write_text("ptr = 40\npte = 10\nwidth = 8\nt_end = 5.0\nsaves = 5\n")
    proc = subprocess.run([sys.executable, "benchmarks/checksums.py", "--repeats", "1", "--config",
                           str(tmp_path / "tiny.toml"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    numbers = json.loads((tmp_path / "out" / "checksums.json").read_text())
    assert 0 < numbers["writer_share_without"] < 1 and 0 < numbers["writer_share_with"] < 1
    assert numbers["file_bytes_with"] > numbers["file_bytes_without"]  # four bytes of checksum per chunk
    assert "of the run's wall time" in proc.stdout


def test_bench_ensemble_writes_the_k_by_width_table_its_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["bench", "ensemble", "--quick", "--out", str(out)]) == 0
    table = pd.read_csv(out / "ensemble.csv")
    assert sorted(zip(table["width"], table["K"])) == [(10, 1), (10, 4), (30, 1), (30, 4)]
    assert (table["speedup"] == table["one_by_one_s"] / table["together_s"]).all() and (table["speedup"] > 0).all()
    assert np.allclose(table["runs_per_hour_together"], table["K"] * 3600 / table["together_s"])
    assert "| 10 (850) |" in (out / "ensemble.md").read_text() and (out / "ensemble.png").stat().st_size > 0
    assert "speedup" in capsys.readouterr().out


def test_bench_ensemble_rejects_solver_and_config_selections(tmp_path, capsys):
    assert main(["bench", "ensemble", "--quick", "--out", str(tmp_path / "e"), "--config", "x.toml"]) == 2
    assert "runs the built-in network at its own widths" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_the_evaluation_benchmark_times_eager_compiled_and_raw_in_one_process(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/evaluation.py", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(tmp_path / "evaluation.csv").iloc[0]
    assert row["network"] == "fc h=100" and row["parameters"] == 26500
    assert min(row["raw_ms"], row["eager_ms"], row["compiled_ms"], row["compile_s"]) > 0
    assert row["eager_over_compiled"] == pytest.approx(row["eager_ms"] / row["compiled_ms"])
    assert (tmp_path / "evaluation.md").is_file()


def test_the_processes_benchmark_times_both_ways_on_the_same_integrations(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/ensemble_processes.py", "--members", "2", "--widths", "6",
                           "--repeats", "1", "--t-end", "2", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(tmp_path / "ensemble_processes.csv").iloc[0]
    assert row["width"] == 6 and row["members"] == 2 and row["evals_per_member"] > 0
    assert row["speedup"] == pytest.approx(row["one_after_another_s"] / row["side_by_side_s"])


def test_the_run_loop_benchmark_records_each_command_s_threads_and_times(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/run_loop.py", "--runs", "2", "--width", "6", "--t-end", "2",
                           "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "run_loop.csv")
    assert list(table["command"]) == [1, 2] and set(table["situation"]) == {"idle"}
    assert (table["threads"] >= 1).all() and (table["evals"] > 0).all()
    assert (table["command_s"] > table["run_wall_s"]).all()  # a command is its run and its start-up


def test_the_device_check_passes_every_check_on_the_cpu_and_writes_its_rows(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/device_check.py", "--device", "cpu", "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["check"]: r for r in json.loads((tmp_path / "device_check.json").read_text())["checks"]}
    assert list(rows) == ["run", "resume", "ensemble", "float32", "commands", "timing"]
    assert all(r["passed"] for r in rows.values())
    assert rows["resume"]["bitwise"] is True and rows["ensemble"]["members"] == 3
    assert rows["run"]["f_diff"] == 0.0 and rows["run"]["error_device"] > 0  # the CPU against itself; a real error
    assert rows["timing"]["h30_float64_eager_cpu_ms"] > 0
    assert "all checks passed" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_device_check_reports_each_failing_check_and_exits_1(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/device_check.py", "--device", "cuda", "--quick", "--out",
                           str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    rows = json.loads((tmp_path / "device_check.json").read_text())["checks"]
    assert not rows[0]["passed"] and "gflow run" in rows[0]["error"] and "exit 2" in rows[0]["error"]
    assert "FAILED: run" in proc.stdout
