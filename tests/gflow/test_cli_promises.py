"""Every promise of the command line kept: each case found by trying gflow as a new user would
(issue "Every promise kept") has a test, and a property-based test drives random argument
vectors through every subcommand."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import gflow
from gflow import RunConfig

from .commands import gflow_cli as _cli

FAST = ["--ptr", "30", "--pte", "10", "--width", "6", "--depth", "1", "--t-end", "2", "--saves", "3",
        "--solver", "gradient-ratio"]


def _refused(capsys, tmp_path, *argv, message):
    """Exit 2, one line naming the problem, and nothing new in tmp_path."""
    before = set(tmp_path.rglob("*"))
    code, _, err = _cli(capsys, *argv)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("gflow: error:") and re.search(message, err), err
    assert set(tmp_path.rglob("*")) == before


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return gflow.run(RunConfig(ptr=30, pte=10, width=6, depth=1, t_end=2.0, saves=3, solver="gradient-ratio"),
                     tmp_path_factory.mktemp("done") / "done.h5", progress=False).path


def test_an_empty_test_split_is_supported(tmp_path, capsys):
    code, out, _ = _cli(capsys, "run", *FAST, "--pte", "0", "--out", str(tmp_path / "r.h5"))
    assert code == 0 and "test         loss nan" in out
    traj = gflow.open(tmp_path / "r.h5")
    assert traj.read("saves/f_test").shape == (4, 0) and np.isnan(traj.saves["test_err"]).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]  # no lock left beside it


@pytest.mark.parametrize("argv,message", [
    (["--pca", "70", "--ptr", "100"], r"pca = 70: must be <= the input dimension of digits \(64\)"),
    (["--kernel-n", "100", "--ptr", "50"], r"kernel_n = 100: must be <= ptr \(50\)"),
    (["--atol", "inf"], "atol = inf: must be a finite number >= 0"),
    (["--rtol", "nan"], "rtol = nan"),
    (["--width", "1000000000000"], r"width = 1000000000000: a network of about 6.5e\+13 parameters: the run needs about "),
    (["--dataset", "teacher", "--ptr", "1000000000"], r"ptr = 1000000000: 1,000,000,010 points of data"),
    (["--saves", "10000000"], r"saves = 10000000: must be <= 1,000,000"),
    (["--solver", "euler", "--dt", "1e-300"], r"dt = 1e-300: solver euler would take t_end / dt = 2e\+300 steps"),
    (["--solver", "gd", "--lr", "1e-300"], r"lr = 1e-300: t_end / lr = 2e\+300 iterations"),
    (["--config", "/dev/zero"], r"config /dev/zero is larger than 1024 KiB"),
])
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path, capsys, argv, message):
    _refused(capsys, tmp_path, "run", *FAST, *argv, "--out", str(tmp_path / "r.h5"), message=message)


def test_an_output_that_is_a_directory_is_refused_even_with_overwrite(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    _refused(capsys, tmp_path, "run", *FAST, "--out", str(tmp_path / "d"), "--overwrite",
             message="exists and is not a regular file")


def test_overwrite_replaces_only_regular_files(tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    _refused(capsys, tmp_path, "run", *FAST, "--out", str(fifo), "--overwrite", message="not a regular file")
    assert fifo.is_fifo()


def test_an_unwritable_output_is_one_line(tmp_path, capsys, monkeypatch):
    """A read-only filesystem, by fault injection (root ignores directory permissions)."""
    from gflow.store import writer

    def read_only(path, *args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(writer.os, "open", read_only)
    _refused(capsys, tmp_path, "run", *FAST, "--out", str(tmp_path / "r.h5"), message="Read-only file system")


@pytest.mark.parametrize("command,message", [(["show"], r"a directory with no trajectory files \(\*\.h5\) in it"),
                                             (["t1"], r"a directory with no trajectory files \(\*\.h5\) in it"),
                                             (["run", "--resume"], "not a file")])
def test_a_directory_without_runs_is_refused_naming_what_it_lacks(tmp_path, capsys, command, message):
    _refused(capsys, tmp_path, *command, str(tmp_path), message=message)


@pytest.mark.parametrize("eps", ["-1", "nan", "0", "inf"])
def test_t1_thresholds_must_be_finite_and_positive(finished, tmp_path, capsys, eps):
    _refused(capsys, tmp_path, "t1", str(finished), "--eps", eps, message="the t1 threshold must be a finite number > 0")


@pytest.mark.parametrize("grid,message", [
    ("seed = { range = [0, 3, 0] }", "the step of a range must not be 0"),
    ("seed = { range = [3, 3] }", "is an empty range"),
    ("alpha = { log = [0.1, 1.0, 0] }", "needs n >= 1 values"),
    ("alpha = [1.0, 1.0]", "lists a value twice"),
])
def test_sweep_grids_that_would_do_nothing_or_repeat_are_refused(tmp_path, capsys, grid, message):
    (tmp_path / "s.toml").write_text(f"[base]\nptr = 20\n\n[grid]\n{grid}\n")
    _refused(capsys, tmp_path, "sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "runs"), message=message)


def test_a_sweep_output_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "s.toml").write_text("[base]\nptr = 20\n\n[grid]\nseed = [0]\n")
    (tmp_path / "runs").write_text("a file")
    _refused(capsys, tmp_path, "sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "runs"),
             message="exists and is not a directory")


def test_a_sweep_off_a_terminal_prints_a_line_per_finished_run(tmp_path):
    (tmp_path / "s.toml").write_text("[base]\nptr = 20\npte = 5\nwidth = 4\nt_end = 1.0\nsaves = 2\n\n"
                                     "[grid]\nseed = [0, 1]\n")
    proc = subprocess.run([sys.executable, "-m", "gflow.cli", "sweep", str(tmp_path / "s.toml"), "--out",
                           str(tmp_path / "runs"), "--workers", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 2 and lines[0].startswith("[1/2] finished run") and lines[1].startswith("[2/2]")
    assert not list((tmp_path / "runs").glob("*.lock"))


def test_a_closed_pipe_ends_quietly(finished):
    proc = subprocess.run(f"{sys.executable} -m gflow.cli show {finished} {finished} | head -1", shell=True,
                          capture_output=True, text=True)
    assert proc.stdout.strip() == str(finished) and proc.stderr == ""


def test_the_summary_shows_the_settings_the_method_uses(tmp_path, capsys):
    code, out, _ = _cli(capsys, "run", *FAST, "--solver", "exponential", "--rtol", "1e-3", "--atol", "1e-6",
                        "--out", str(tmp_path / "e.h5"))
    assert code == 0 and "solver       exponential scheme=exprb53s3 rtol=0.001 atol=1e-06\n" in out and "max_dgrad" not in out
    code, out, _ = _cli(capsys, "run", *FAST, "--solver", "momentum", "--out", str(tmp_path / "m.h5"))
    assert "solver       momentum tau=1 controller=paper max_dgrad=0.0001 max_dout=0.1\n" in out and "rtol" not in out


def test_help_lists_every_field_with_its_meaning_choices_and_default():
    proc = subprocess.run([sys.executable, "-m", "gflow.cli", "run", "--help"], capture_output=True, text=True)
    text = " ".join(proc.stdout.split())
    for f in ("--alpha", "--model-args", "--kernel-outputs", "--data"):
        assert f in text
    assert "(softhinge, hinge, qhinge, mse, cross-entropy); default softhinge" in text
    assert "chebyshev, exponential, dopri5" in text and "default exponential" in text
    assert "STR" not in text and "FLOAT" not in text
    bench = subprocess.run([sys.executable, "-m", "gflow.cli", "bench", "--help"], capture_output=True, text=True)
    assert "digits-mom-a1" in bench.stdout


# --- the whole surface, by property ----------------------------------------------------------------

NUMBERS = st.sampled_from(["0", "-1", "1", "2", "0.5", "1e-3", "nan", "inf", "-inf", "1e300", "abc", "", "3.5"])
SMALL_INTS = st.sampled_from(["0", "-2", "1", "2", "5", "x", "1e3"])
WORDS = st.sampled_from(["digits", "teacher", "mnist", "fc", "cnn", "gd", "exponential", "dopri5", "rk4", "momentum",
                         "softhinge", "cross-entropy", "classes", "halves", "trace", "full", "float32", "cuda", "", "x:y",
                         "tests.gflow.usercode:mlp", "os:system", "../../etc/passwd", "é"])

RUN_FLAGS = {
    "--alpha": NUMBERS, "--width": SMALL_INTS, "--depth": SMALL_INTS, "--ptr": st.sampled_from(["5", "0", "-3", "2000"]),
    "--pte": st.sampled_from(["0", "3", "-1", "100000"]), "--t-end": NUMBERS, "--saves": SMALL_INTS,
    "--save-t-min": NUMBERS, "--solver": WORDS, "--loss": WORDS, "--dataset": WORDS, "--arch": WORDS, "--act": WORDS,
    "--labels": WORDS, "--rtol": NUMBERS, "--atol": NUMBERS, "--dt": NUMBERS, "--tau": NUMBERS,
    "--max-dgrad": NUMBERS, "--max-dout": NUMBERS, "--kernel-n": SMALL_INTS, "--kernel-every": SMALL_INTS,
    "--kernel-outputs": WORDS, "--pca": SMALL_INTS, "--classes": st.sampled_from(["1 2", "3", "0 0", "x"]),
    "--model": WORDS, "--model-args": st.sampled_from(['{"width": 3}', "[1]", "{", "{}"]), "--data": WORDS,
    "--flow": WORDS, "--controller": WORDS, "--dtype": WORDS, "--device": WORDS, "--seed": SMALL_INTS,
    "--stop-margin": NUMBERS, "--chunk": SMALL_INTS, "--downsample": SMALL_INTS, "--beta": NUMBERS,
}
# Every generated run stays short: these come first, so that a drawn flag can override them.
SHORT_RUN = ["--ptr", "12", "--pte", "4", "--width", "3", "--depth", "1", "--t-end", "0.5", "--saves", "2",
             "--max-steps", "40"]


def _pairs(flags, n):
    return st.lists(st.sampled_from(sorted(flags)), max_size=n, unique=True).flatmap(
        lambda names: st.tuples(*(st.tuples(st.just(k), flags[k]) for k in names)))


def _flat(pairs):
    return [token for name, value in pairs for token in ([name, *value.split(" ")] if name == "--classes" else [name, value])]


@st.composite
def argv(draw, finished: Path, tmp: Path):
    command = draw(st.sampled_from(["run", "run-resume", "show", "t1", "query", "plot", "sweep", "bench", "reproduce"]))
    path = draw(st.sampled_from([str(finished), str(tmp / "absent.h5"), str(tmp), str(tmp / "junk.h5")]))
    if command == "run":
        out = draw(st.sampled_from([str(tmp / "new.h5"), str(finished), str(tmp), str(tmp / "no" / "x.h5")]))
        extra = ["--overwrite"] if draw(st.booleans()) and out != str(finished) else []
        return ["run", *SHORT_RUN, *_flat(draw(_pairs(RUN_FLAGS, 4))), "--out", out, *extra]
    if command == "run-resume":
        return ["run", "--resume", path, *draw(st.sampled_from([[], ["--max-steps", "-1"], ["--max-wall", "nan"]]))]
    if command == "show":
        return ["show", path]
    if command == "t1":
        return ["t1", path, "--eps", draw(NUMBERS)]
    if command == "query":
        where = draw(st.sampled_from(["alpha>=1", "status==finished", "nope>1", "alpha>>1", "alpha<x", "=="]))
        return ["query", draw(st.sampled_from([str(finished.parent), str(tmp), str(tmp / "absent")])),
                "--where", where, "--format", draw(st.sampled_from(["table", "csv", "json", "xml"]))]
    if command == "plot":
        return ["plot", draw(st.sampled_from([str(finished.parent), str(tmp / "absent")])), "--kind",
                draw(st.sampled_from(["phase", "test-error", "ensemble", "kernel-change", "pie"])), "-o",
                draw(st.sampled_from([str(tmp / "f.png"), str(tmp / "no" / "f.png"), str(tmp / "f.tiff"), str(tmp)]))]
    if command == "sweep":
        grid = draw(st.sampled_from(["seed = [0]", "seed = []", "alpha = { log = [1, 0, 2] }", "colour = [1]",
                                     "seed = { range = [0, 1, 0] }", "width = [0]"]))
        (tmp / "s.toml").write_text(f"[base]\nptr = 12\npte = 4\nwidth = 3\nt_end = 0.5\nsaves = 2\n\n[grid]\n{grid}\n")
        return ["sweep", str(tmp / "s.toml"), "--out", str(tmp / "runs"),
                "--workers", draw(st.sampled_from(["1", "0", "-1"]))]
    if command == "bench":  # only inputs that are refused: a real benchmark takes minutes
        return draw(st.sampled_from([["bench", "solvers", "--problems", "nope"], ["bench", "solvers", "--methods", "x"],
                                     ["bench", "solvers", "--tolerances", "7"], ["bench", "nothing"],
                                     ["bench", "overhead", "--methods", "dopri5"],
                                     ["bench", "solvers", "--config", "x.toml"]]))
    return ["reproduce", draw(st.sampled_from(["nope", "../digits", ""])), "--out", str(tmp / "rep")]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(data=st.data())
def test_random_argument_vectors_exit_0_1_or_2_cleanly_and_leave_nothing_on_refusal(finished, tmp_path, capsys, data):
    tmp = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    tmp.mkdir()
    (tmp / "junk.h5").write_bytes(b"not hdf5")
    args = data.draw(argv(finished, tmp))
    before = set(tmp.rglob("*")) | {tmp / "s.toml"}
    finished_bytes = finished.read_bytes()
    code, _, err = _cli(capsys, *args)  # an uncaught exception fails the test: never a traceback
    event(f"{args[0]} exit {code}")
    assert code in (0, 1, 2), (args, code, err)
    assert "Traceback" not in err
    if code == 1:  # only a run that did not finish exits 1 (stopped by its budget, or failed)
        assert args[0] in ("run", "sweep") and "error" not in err, (args, err)
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("gflow: error:") or err.startswith("usage:"), (args, err)
        assert set(tmp.rglob("*")) <= before, (args, set(tmp.rglob("*")) - before)
    assert not list(tmp.rglob("*.lock")) and not list(finished.parent.glob("*.lock"))
    assert finished.read_bytes() == finished_bytes  # nothing touched the finished run


def test_an_output_name_too_long_for_the_file_system_is_one_line(tmp_path, capsys):
    _refused(capsys, tmp_path, "run", *FAST, "--out", str(tmp_path / ("x" * 300 + ".h5")),
             message="has 303 bytes; at most 235")


def test_an_empty_figure_name_is_one_line(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    _refused(capsys, tmp_path, "plot", str(tmp_path / "runs"), "--kind", "phase", "-o", "", message="give a file name")


USER_MODEL = ["--ptr", "30", "--pte", "10", "--t-end", "1", "--saves", "2"]


def test_user_code_that_exits_is_one_line_and_exit_2(tmp_path, capsys):
    _refused(capsys, tmp_path, "run", *USER_MODEL, "--model", "tests.gflow.usercode_exits:factory", "--out",
             str(tmp_path / "r.h5"), message=r"model = .*raised SystemExit\(0\): user code tried to end the process")


def test_an_interrupt_before_the_file_exists_claims_no_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "interrupting_mod.py").write_text("raise KeyboardInterrupt\n")
    code, _, err = _cli(capsys, "run", *USER_MODEL, "--model", "interrupting_mod:f", "--out", str(tmp_path / "r.h5"))
    assert code == 130 and err == "gflow: stopped by SIGINT\n", err
    assert not (tmp_path / "r.h5").exists()
