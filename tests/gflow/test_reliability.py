"""Crash safety, resume, clean stops on signals, live reading, concurrent writers.

These start real ``gflow run`` processes and signal or kill them.
"""

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import gflow
from gflow import GflowError, RunConfig
from gflow.run import resume

CFG = RunConfig(ptr=80, pte=20, width=16, t_end=40.0, saves=15, save_t_min=0.1)


@pytest.mark.parametrize("solver", ["gradient-ratio", "momentum", "exponential"])
def test_resumed_native_run_is_bitwise_the_uninterrupted_run(tmp_path, solver):
    # The exponential stepper keeps nothing across steps but dt, so it too resumes bitwise.
    cfg = CFG.replace(solver=solver, rtol=1e-4, atol=1e-7)
    full = gflow.run(cfg, tmp_path / "full.h5", progress=False)
    stop = len(full.steps) // 2
    while full.steps["t"].iloc[stop - 1] in full.save_times:  # stop between saves, not on one
        stop += 1
    part = gflow.run(cfg.replace(max_steps=stop), tmp_path / "part.h5", progress=False)
    assert part.status == "stopped" and len(part) < len(full)
    assert part.summary()["t"] == full.steps["t"].iloc[stop - 1] > part.save_times[-1]  # the stop, past the last save
    assert part.checkpoint()["step"] == stop
    done = resume(part.path, max_steps=10**9, progress=False)
    assert done.status == "finished"
    for name in ("saves/t", "saves/state", "saves/f_train", "saves/f_test", "saves/step", "saves/interpolated"):
        assert np.array_equal(done.read(name), full.read(name)), name  # the saves of the uninterrupted run
    steps, full_steps = done.steps, full.steps
    for column in ("t", "dt", "loss", "grad_norm", "dgrad_ratio", "dout_ratio", "error_ratio", "rejected"):
        assert np.array_equal(steps[column], full_steps[column], equal_nan=True), column
    assert np.array_equal(steps["evals"].iloc[stop:], full_steps["evals"].iloc[stop:] + 1)  # one evaluation to restart
    assert done.summary()["evals"] == full.summary()["evals"] + 1
    assert done.config.max_steps == 10**9  # the file records the budget it finished under


@pytest.mark.parametrize("solver", ["dopri5", "chebyshev"])
def test_resumed_error_controlled_run_agrees_to_tolerance(tmp_path, solver):
    # Chebyshev's spectral-radius estimate restarts on resume, so like torchdiffeq's
    # methods it continues to tolerance rather than bitwise.
    cfg = CFG.replace(solver=solver, rtol=1e-8, atol=1e-10)
    full = gflow.run(cfg, tmp_path / "full.h5", progress=False)
    part = gflow.run(cfg.replace(max_steps=20), tmp_path / "part.h5", progress=False)
    done = resume(part.path, max_steps=10**9, progress=False)
    assert done.status == "finished"
    scale = np.abs(full.outputs(-1) - full.outputs(0)).max()
    assert np.abs(done.outputs(-1) - full.outputs(-1)).max() < 1e-6 * scale


def test_finished_runs_are_not_resumed(tmp_path):
    traj = gflow.run(CFG.replace(t_end=1.0), tmp_path / "f.h5", progress=False)
    with pytest.raises(GflowError, match="status finished"):
        resume(traj.path)


def test_non_finite_values_fail_the_run_and_record_the_offending_step(tmp_path):
    cfg = CFG.replace(solver="euler", dt=1e6, loss="mse", alpha=100.0, t_end=1e8)
    traj = gflow.run(cfg, tmp_path / "nan.h5", progress=False)
    assert traj.status == "failed" and "non-finite" in traj.stop_reason
    steps = traj.steps[["loss", "grad_norm"]].to_numpy()
    assert not np.isfinite(steps[-1]).all() and np.isfinite(steps[:-1]).all()
    assert traj.save_times[-1] == traj.steps["t"].iloc[-1]  # the offending state is saved for inspection


# ---- real processes ---------------------------------------------------------------

# The paper's stepper with a tenth of its default gradient turn: a run that lasts ~13 s alone
# on this project's 2-core machine (8 s at max_dgrad 1e-4 once start-up got faster, within
# the 1.5-9 s window of the random kills).
ARGS = ["--ptr", "200", "--width", "64", "--t-end", "1e6", "--saves", "400", "--save-t-min", "0.01",
        "--solver", "gradient-ratio", "--max-dgrad", "1e-5"]


def _start(out, *extra):
    cmd = [sys.executable, "-m", "gflow.cli", "run", *ARGS, "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _saves_seen(out) -> int:
    try:
        return len(gflow.open(out))
    except gflow.FileFormatError:  # not created yet, or created but not yet a trajectory
        return 0


def _wait_for_saves(out, n, timeout=90):
    start = time.time()
    while time.time() - start < timeout:
        if _saves_seen(out) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{out} never reached {n} saves")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_cleanly_with_status_stopped_and_no_traceback(tmp_path, sig, code):
    out = tmp_path / f"{sig.name}.h5"
    proc = _start(out)
    _wait_for_saves(out, 3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert "Traceback" not in err and f"stopped by {sig.name}" in err and "--resume" in err
    traj = gflow.open(out)
    assert traj.status == "stopped" and sig.name in traj.stop_reason
    assert traj.checkpoint()["t"] == traj.steps["t"].iloc[-1] >= traj.save_times[-1]  # stopped at a step, kept
    steps = traj.summary()["step"]
    more = resume(out, max_steps=steps + 20, progress=False)
    assert more.status == "stopped" and more.summary()["step"] == steps + 20


def test_reader_sees_a_growing_run_while_it_is_written(tmp_path):
    out = tmp_path / "live.h5"
    proc = _start(out, "--t-end", "1e12")  # still running after the reads below (commits come ~1 s apart)
    try:
        _wait_for_saves(out, 2)
        seen = []
        for _ in range(5):
            traj = gflow.open(out)
            n = len(traj)
            assert traj.status == "running"
            assert traj.outputs(n - 1).shape == (200,) and traj.state(n - 1).isfinite().all()
            assert len(traj.saves) >= n and len(traj.read("saves/state")) >= n  # it may have grown since
            seen.append(n)
            time.sleep(1.0)
        assert seen == sorted(seen) and seen[-1] > seen[0]
    finally:
        proc.kill()
        proc.wait()


def test_twenty_kills_at_random_moments_leave_readable_resumable_files(tmp_path):
    """Fault injection: SIGKILL real runs at seeded random moments, from before the file
    exists to deep into the run, four processes at a time."""
    rng = random.Random(20261122)
    kills = 0
    for batch in range(5):
        runs = [(tmp_path / f"k{batch}-{i}.h5", rng.uniform(1.5, 9.0)) for i in range(4)]
        procs = [(out, _start(out), delay) for out, delay in runs]
        start = time.time()
        seen = {}
        for out, proc, delay in sorted(procs, key=lambda r: r[2]):
            while time.time() - start < delay:
                time.sleep(0.05)
            seen[out] = _saves_seen(out)  # every save visible before the kill must survive it
            proc.kill()
            proc.wait()
            kills += 1
        for out, _, _ in procs:
            if not out.exists():
                assert seen[out] == 0
                continue
            if seen[out] == 0 and _saves_seen(out) == 0:
                continue  # killed while the file was being created: nothing was promised yet
            traj = gflow.open(out)
            n = len(traj)
            assert traj.status == "running" and n >= seen[out] and n >= 1
            assert np.isfinite(traj.read("saves/state")[:n]).all()
            assert traj.outputs(n - 1, "test").shape == (gflow.open(out).config.pte,)
            assert len(traj.steps) >= traj.summary()["step"]
        resumable = [out for out, _, _ in procs if _saves_seen(out) > 0]
        if resumable:  # one resume per batch: the file continues from its last complete save
            traj = gflow.open(resumable[0])
            step = traj.summary()["step"]
            done = resume(resumable[0], max_steps=step + 5, progress=False)
            assert done.status == "stopped" and done.summary()["step"] == step + 5
            assert len(done.steps) == step + 5
    assert kills >= 20


def test_two_writers_of_one_output_cannot_both_run(tmp_path):
    out = tmp_path / "same.h5"
    a, b = _start(out), _start(out)
    try:
        _wait_for_saves(out, 2)
        start = time.time()
        while a.poll() is None and b.poll() is None and time.time() - start < 60:
            time.sleep(0.1)
        codes = [p.poll() for p in (a, b)]
        assert codes.count(None) == 1 and codes.count(2) == 1  # exactly one lost, cleanly
        loser = a if a.poll() == 2 else b
        err = loser.stderr.read()
        assert "exists" in err or "another" in err
        assert "Traceback" not in err
    finally:
        for p in (a, b):
            p.kill()
            p.wait()
    assert len(gflow.open(out)) >= 2


def test_a_live_run_cannot_be_resumed_by_another_process(tmp_path):
    out = tmp_path / "live.h5"
    proc = _start(out)
    try:
        _wait_for_saves(out, 2)
        with pytest.raises(GflowError, match="another live process"):
            resume(out, progress=False)
    finally:
        proc.kill()
        proc.wait()
    killed = gflow.open(out)
    before, step = killed.read("saves/state"), killed.summary()["step"]
    done = resume(out, max_steps=step + 3, progress=False)
    assert done.summary()["step"] == step + 3 and len(done) > len(before)
    assert np.array_equal(done.read("saves/state")[: len(before)], before)  # nothing lost or rewritten


USER_ARGS = ["--model", "tests.gflow.usercode:mlp", "--model-args", '{"width": 24}',
             "--data", "tests.gflow.usercode:parity_digits", "--data-args", '{"n_train": 200, "n_test": 50}',
             "--t-end", "3e4", "--saves", "300", "--save-t-min", "0.01"]


def test_a_killed_run_of_a_factory_model_resumes_bitwise_and_its_t1_is_measured(tmp_path):
    """SIGKILL a CLI run of a user model given by factory references, resume it from the CLI,
    and compare with the uninterrupted run; then gflow t1 on it (the model rebuilt from the file)."""
    out = tmp_path / "user.h5"
    proc = subprocess.Popen([sys.executable, "-m", "gflow.cli", "run", *USER_ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_saves(out, 40)
    proc.kill()
    proc.wait()
    assert gflow.open(out).status == "running"
    resumed = subprocess.run([sys.executable, "-m", "gflow.cli", "run", "--resume", str(out), "--trust-code"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    cfg = gflow.open(out).config
    full = gflow.run(cfg, tmp_path / "full.h5", progress=False)
    done = gflow.open(out)
    assert np.array_equal(done.save_times, full.save_times)
    assert np.array_equal(done.read("saves/state"), full.read("saves/state"))
    shown = subprocess.run([sys.executable, "-m", "gflow.cli", "t1", str(out), "--eps", "0.01", "--trust-code"],
                           capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert str(out) in shown.stdout and "t1_linearization" in shown.stdout
