import subprocess
import sys

import pytest

from gflow.cli import main

FAST = ["--ptr", "60", "--pte", "20", "--width", "10", "--t-end", "5", "--saves", "5", "--solver", "gradient-ratio"]


def _gflow(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gflow.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_run_then_show_end_to_end_in_a_subprocess(tmp_path):
    out = tmp_path / "r.h5"
    proc = _gflow("run", *FAST, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "status       finished" in proc.stdout
    assert "\r" not in proc.stderr  # no progress bar when not on a terminal
    shown = _gflow("show", str(out))
    assert shown.returncode == 0 and "gradient evaluations" in shown.stdout


HEAVY = ("torch", "scipy", "matplotlib", "torchdiffeq", "sklearn")


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["show"]])
def test_help_and_show_start_without_importing_torch_or_plotting(tmp_path, argv):
    """Start-up is imports: torch alone is ~1 s. `gflow --help` and `gflow show` need none of it."""
    out = tmp_path / "r.h5"
    if argv == ["show"]:
        assert _gflow("run", *FAST, "--out", str(out)).returncode == 0
        argv = ["show", str(out)]
    code = ("import sys\nfrom gflow.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--alpha", "-1"], "alpha = -1.0: must lie in [1e-150, 1e150]"),
        (["--alpha", "0"], "alpha = 0.0"),
        (["--width", "0"], "width = 0: must be >= 1"),
        (["--dataset", "imagenet"], "dataset = 'imagenet': must be one of"),
        (["--act", "gelu"], "act = 'gelu': must be one of"),
        (["--solver", "sgd"], "solver = 'sgd': must be one of"),
        (["--loss", "l1"], "loss = 'l1': must be one of"),
        (["--ptr", "5000"], "exceeds the 1797 samples of digits"),
        (["--t-end", "0"], "t_end = 0.0"),
        (["--t-end", "-3"], "t_end = -3.0"),
        (["--alpha", "abc"], "argument --alpha: invalid float value: 'abc'"),
        (["--config", "missing.toml"], "cannot read config missing.toml"),
        (["--model", "tests.gflow.nowhere:f"], "cannot import module 'tests.gflow.nowhere'"),
        (["--model", "tests.gflow.usercode:not_a_module"], "must give a torch.nn.Module (the factory returned a int)"),
        (["--model", "tests.gflow.usercode:mlp", "--model-args", '{"outputs": 3}'], "two-class loss for one output"),
        (["--model", "tests.gflow.usercode:mlp", "--model-args", '{"outputs": 3}', "--loss", "cross-entropy"],
         "integer labels 0..2"),
        (["--model", "tests.gflow.usercode:mlp", "--model-args", "[1]"], "argument --model-args: not a JSON object"),
        (["--data", "tests.gflow.usercode:wrong_arity"], "the loader must return"),
        (["--model", "tests.gflow.usercode:mlp", "--width", "7"], "width = 7: sets the built-in network"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, capsys, args, message):
    out = tmp_path / "bad.h5"
    try:
        code = main(["run", *args, "--out", str(out)])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("gflow: error:")
    assert not out.exists()


def test_argparse_errors_exit_with_code_2(tmp_path):
    proc = _gflow("run", "--alpha", "abc", "--out", str(tmp_path / "x.h5"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_unreadable_config_is_one_line_exit_2(tmp_path):
    (tmp_path / "bad.toml").write_text("alpha = [")
    proc = _gflow("run", "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "x.h5"))
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "x.h5").exists()


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "r.h5"
    out.write_bytes(b"precious")
    proc = _gflow("run", *FAST, "--out", str(out))
    assert proc.returncode == 2 and "exists; pass --overwrite" in proc.stderr
    assert out.read_bytes() == b"precious"
    assert _gflow("run", *FAST, "--out", str(out), "--overwrite").returncode == 0


def test_config_file_with_flag_overrides(tmp_path):
    (tmp_path / "run.toml").write_text("ptr = 60\npte = 20\nwidth = 10\nt_end = 2.0\nalpha = 5.0\n")
    out = tmp_path / "r.h5"
    assert main(["run", "--config", str(tmp_path / "run.toml"), "--alpha", "0.5", "--out", str(out)]) == 0
    import gflow

    cfg = gflow.open(out).config
    assert cfg.alpha == 0.5 and cfg.width == 10 and cfg.t_end == 2.0


def test_show_rejects_a_file_that_is_not_a_trajectory(tmp_path, capsys):
    (tmp_path / "x.h5").write_bytes(b"not hdf5 at all")
    assert main(["show", str(tmp_path / "x.h5")]) == 2
    assert "not an HDF5 file" in capsys.readouterr().err



def test_resume_continues_a_stopped_run_under_a_new_step_budget(tmp_path, capsys):
    out = tmp_path / "r.h5"
    assert main(["run", *FAST, "--max-steps", "10", "--out", str(out)]) == 1  # stopped, not finished
    assert "maximum of 10 steps" in capsys.readouterr().out
    assert main(["run", "--resume", str(out), "--max-steps", "1000000"]) == 0
    assert "status       finished" in capsys.readouterr().out
    assert main(["run", "--resume", str(out)]) == 2
    assert "status finished; only running (killed) or stopped runs can be resumed" in capsys.readouterr().err


def test_show_of_a_stopped_run_gives_t_and_loss_of_the_same_step(tmp_path, capsys):
    import gflow

    out = tmp_path / "s.h5"
    main(["run", *FAST, "--saves", "2", "--t-end", "50", "--max-steps", "40", "--out", str(out)])
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    steps = gflow.open(out).steps
    t, loss = steps["t"].iloc[-1], steps["loss"].iloc[-1]
    assert f"reached      t = {t:.6g}" in shown
    assert f"loss {loss:.4e} at t = {t:.6g}; error" in shown and "at the last save" in shown


def test_show_and_t1_read_a_directory_as_its_runs_and_a_damaged_one_does_not_hide_the_others(tmp_path, capsys):
    import csv
    import io

    out = tmp_path / "ens"
    assert main(["run", "--ensemble", "2", *FAST, "--kernel-n", "6", "--out", str(out)]) == 0
    members = sorted(p.name for p in out.glob("*.h5"))
    (out / "junk.h5").write_bytes(b"not hdf5")
    capsys.readouterr()
    assert main(["show", str(out)]) == 2
    shown = capsys.readouterr()
    assert shown.out.count("status       finished") == 2
    assert shown.out.index(members[0]) < shown.out.index(members[1])
    assert shown.err.count("\n") == 1 and "junk.h5: not an HDF5 file" in shown.err
    assert main(["t1", str(out), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["file"].split("/")[-1] for r in rows] == ["junk.h5", *members]
    assert rows[0]["note"].startswith("unreadable: ") and [r["seed"] for r in rows[1:]] == ["0", "1"]
    assert all(float(r["t1_kernel"]) > 0 for r in rows[1:])
    assert main(["t1", str(out / "junk.h5")]) == 2  # a file named on its own is an error
    assert main(["show", str(tmp_path / "empty")]) == 2 and "no such file or directory" in capsys.readouterr().err


def test_t1_without_the_users_package_gives_the_stored_kernel_t1_and_says_why(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mymodels.py").write_text("from torch import nn\n\ndef net(d=64):\n"
                                         "    return nn.Sequential(nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 1))\n")
    out = tmp_path / "u.h5"
    made = subprocess.run([sys.executable, "-m", "gflow.cli", "run", "--model", "mymodels:net", "--ptr", "30", "--pte",
                           "10", "--t-end", "10", "--saves", "5", "--kernel-n", "6", "--kernel-every", "1",
                           "--out", str(out)], capture_output=True, text=True, cwd=package)
    assert made.returncode == 0, made.stderr
    proc = _gflow("t1", str(out), "--trust-code", "--format", "csv", cwd=tmp_path)  # mymodels not importable here
    assert proc.returncode == 0, proc.stderr
    import csv
    import io

    row = next(csv.DictReader(io.StringIO(proc.stdout)))
    assert float(row["t1_kernel"]) > 0 and row["t1_linearization"] == "" and "cannot import module 'mymodels'" in row["note"]
