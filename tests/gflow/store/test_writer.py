"""The writer (gflow.store.writer): what it streams into the file, and a disk that fills up."""

import os
import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gflow
from gflow.errors import DiskFull
from gflow.store import writer as writer_module

from .conftest import CFG


def test_the_step_table_records_the_ratio_the_controller_measured(tmp_path):
    """Accepted steps have every ratio at most 1; a ratio the controller does not measure is NaN."""
    cheb = gflow.run(CFG.replace(solver="chebyshev", rtol=1e-4, atol=1e-7), tmp_path / "c.h5", progress=False).steps
    paper = gflow.run(CFG, tmp_path / "p.h5", progress=False).steps
    assert (cheb["error_ratio"] <= 1).all() and (cheb["error_ratio"] > 0).any()
    assert cheb["dgrad_ratio"].isna().all()
    assert paper["error_ratio"].isna().all() and (paper["dgrad_ratio"] < 1).all()



def test_a_new_file_appears_at_its_name_only_once_complete(tmp_path, monkeypatch):
    seen = []
    create = writer_module.TrajectoryWriter._create

    def spy(self, flow):
        seen.append(self.path.exists())
        create(self, flow)
        seen.append(self.path.exists())

    monkeypatch.setattr(writer_module.TrajectoryWriter, "_create", spy)
    traj = gflow.run(CFG, tmp_path / "r.h5", progress=False)
    assert seen == [False, False] and traj.status == "finished"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]  # the hidden name it was built under is gone


def test_a_reader_polling_a_starting_run_never_finds_a_half_made_file(tmp_path):
    path = tmp_path / "r.h5"
    proc = subprocess.Popen([sys.executable, "-m", "gflow.cli", "run", "--ptr", "40", "--pte", "10", "--width", "8",
                             "--t-end", "5", "--saves", "5", "--out", str(path)], stdout=subprocess.DEVNULL)
    errors, opened = set(), 0
    while proc.poll() is None:
        try:
            gflow.open(path).summary()
            opened += 1
        except gflow.GflowError as e:
            errors.add(str(e).split(": ", 1)[1][:40])
    assert proc.returncode == 0 and gflow.open(path).status == "finished"
    assert errors <= {"no such file"}, errors


# --- commits --------------------------------------------------------------------------------

GROUPED = gflow.RunConfig(ptr=60, pte=20, width=16, t_end=50.0, saves=40, save_t_min=0.1, kernel_n=10,
                          kernel_every=3, state_saves=7, threads=1)  # the default method: interpolated saves


def _commits(monkeypatch):
    made = []
    commit = writer_module.TrajectoryWriter._commit

    def counting(self):
        made.append(len(self._staged_t))
        commit(self)

    monkeypatch.setattr(writer_module.TrajectoryWriter, "_commit", counting)
    return made


def test_saves_committed_in_groups_make_the_file_of_saves_committed_one_by_one(tmp_path, monkeypatch):
    import h5py

    made = _commits(monkeypatch)
    monkeypatch.setattr(writer_module, "COMMIT_SHARE", float("inf"))  # every save that closes its step commits
    one_by_one = gflow.run(GROUPED, tmp_path / "one.h5", progress=False)
    every = list(made)
    made.clear()
    monkeypatch.setattr(writer_module, "COMMIT_SHARE", 1e-12)  # none but the first before STEP_FLUSH_S, and the end
    grouped = gflow.run(GROUPED, tmp_path / "grouped.h5", progress=False)
    assert sum(every) == GROUPED.saves + 1 and len(every) > 10  # at each step that saves
    assert made == [1, GROUPED.saves]  # t = 0, then the rest at the end
    with h5py.File(one_by_one.path) as a, h5py.File(grouped.path) as b:
        names = []
        a.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            if name.startswith("checkpoint") or name.endswith("wall"):
                continue
            assert np.array_equal(a[name][()], b[name][()], equal_nan=a[name].dtype.kind == "f"), name
    a, b = one_by_one.checkpoint(), grouped.checkpoint()
    assert a["t"] == GROUPED.t_end and np.array_equal(a.pop("state"), b.pop("state"))
    assert a | {"wall": 0} == b | {"wall": 0}
    assert len(grouped.stored_kernel_change()[0]) == len(one_by_one.stored_kernel_change()[0]) > 5


KILLED_AT_SAVE = """
import os, sys
import gflow
from gflow.store import writer
writer.COMMIT_SHARE = 1e-12  # commits: t = 0 only, before the kill
write_save = writer.TrajectoryWriter._write_save
def dying(self, record, with_state):
    write_save(self, record, with_state)
    if record.index == 25:
        os._exit(9)  # as SIGKILL: no handler, no flush, no close
writer.TrajectoryWriter._write_save = dying
gflow.run(gflow.RunConfig.from_json(sys.argv[1]), sys.argv[2], progress=False)
"""


def test_a_kill_between_commits_keeps_the_committed_saves_and_resume_redoes_the_rest_bitwise(tmp_path):
    out = tmp_path / "killed.h5"
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_SAVE, GROUPED.to_json(), str(out)], capture_output=True,
                          text=True)
    assert proc.returncode == 9, proc.stderr
    killed = gflow.open(out)
    assert killed.status == "running" and len(killed) == 1  # the 25 saves staged since are not there
    assert killed.checkpoint()["t"] == 0.0  # the commit's
    done = gflow.resume(out, progress=False)
    full = gflow.run(done.config, tmp_path / "full.h5", progress=False)  # the torch threads the file recorded
    assert done.status == "finished"
    for name in ("saves/t", "saves/state", "saves/f_train", "saves/f_test", "saves/weight_change", "kernel/theta"):
        assert np.array_equal(done.read(name), full.read(name), equal_nan=True), name


# --- a disk that fills up ------------------------------------------------------------------------




RUN = ["--ptr", "100", "--pte", "50", "--width", "100", "--t-end", "100", "--solver", "gradient-ratio"]
FULL_CFG = gflow.RunConfig(ptr=100, pte=50, width=100, t_end=100.0, solver="gradient-ratio")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return gflow.run(FULL_CFG, tmp_path_factory.mktemp("full") / "full.h5", progress=False)


def _same_saves(a, b):
    assert np.array_equal(a.save_times, b.save_times)
    assert np.array_equal(a.read("saves/state"), b.read("saves/state"))
    assert np.array_equal(a.read("saves/f_test"), b.read("saves/f_test"))


def test_a_write_stopped_by_the_file_size_limit_is_one_line_exit_1_and_the_file_resumes(tmp_path, uninterrupted):
    """Fault injection without root: RLIMIT_FSIZE makes a write fail mid-run (EFBIG), as a
    full disk does (ENOSPC). No crash, no traceback; the complete saves stay readable and
    the run resumes to the uninterrupted run's saves."""
    out = tmp_path / "r.h5"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

    proc = subprocess.run([sys.executable, "-m", "gflow.cli", "run", *RUN, "--out", str(out)], preexec_fn=limit,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "file size limit" in proc.stderr and f"--resume {out}" in proc.stderr
    traj = gflow.open(out)
    assert traj.status == "running" and len(traj) >= 1  # as a kill leaves it: resumable
    done = gflow.resume(out, progress=False)
    assert done.status == "finished"
    _same_saves(done, uninterrupted)
    assert not out.with_name("r.h5.lock").exists()


def test_a_disk_too_full_for_the_next_save_stops_the_run_resumably(tmp_path, monkeypatch, uninterrupted):
    saves = []
    original = writer_module.TrajectoryWriter._write_save

    def counting(self, record, with_state):
        saves.append(record.t)
        return original(self, record, with_state)

    monkeypatch.setattr(writer_module.TrajectoryWriter, "_write_save", counting)
    monkeypatch.setattr(writer_module, "_free_bytes", lambda path: 10**12 if len(saves) < 30 else 2**20)
    out = tmp_path / "r.h5"
    with pytest.raises(DiskFull, match="no space left on the disk of .*r.h5 for its next save .*resume it") as info:
        gflow.run(FULL_CFG, out, progress=False)
    assert not info.value.unclean
    traj = gflow.open(out)
    assert traj.status == "stopped" and "no space left" in traj.stop_reason and len(traj) == 30
    monkeypatch.setattr(writer_module, "_free_bytes", lambda path: 10**12)
    done = gflow.resume(out, progress=False)
    assert done.status == "finished"
    _same_saves(done, uninterrupted)


def test_a_disk_too_full_to_create_the_file_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "_free_bytes", lambda path: 1000)
    out = tmp_path / "r.h5"
    with pytest.raises(DiskFull, match="to create it .*no file written"):
        gflow.run(FULL_CFG, out, progress=False)
    assert list(tmp_path.iterdir()) == []


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path):
    """mount(size) -> a directory on a tmpfs of that size (root only), unmounted afterwards."""
    mounted = []

    def mount(size):
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                          capture_output=True).returncode:
            pytest.skip("tmpfs cannot be mounted here")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.skipif(not _can_mount(), reason="mounting a small tmpfs needs root")
def test_a_disk_too_small_to_create_the_file_is_one_line_and_no_file(small_disk):
    disk = small_disk("64k")
    proc = subprocess.run([sys.executable, "-m", "gflow.cli", "run", *RUN, "--out", str(disk / "x.h5")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "no file written" in proc.stderr
    assert list(disk.iterdir()) == []


@pytest.mark.skipif(not _can_mount(), reason="mounting a small tmpfs needs root")
def test_a_real_full_disk_stops_the_run_and_more_room_lets_it_finish(small_disk, uninterrupted):
    disk = small_disk("4m")
    out = disk / "r.h5"
    proc = subprocess.run([sys.executable, "-m", "gflow.cli", "run", *RUN, "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "no space left" in proc.stderr
    assert gflow.open(out).status == "stopped"
    subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
    resumed = subprocess.run([sys.executable, "-m", "gflow.cli", "run", "--resume", str(out)],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _same_saves(gflow.open(out), uninterrupted)


def test_a_live_reader_sees_step_rows_between_saves(tmp_path, monkeypatch):
    """Step rows reach the file at least every STEP_FLUSH_S seconds (here: at every step), so
    another process's `gflow show` moves between two saves."""
    monkeypatch.setattr(writer_module, "STEP_FLUSH_S", 0.0)
    path = tmp_path / "live.h5"
    seen = []
    observe = writer_module.TrajectoryWriter.on_step

    def spy(self, record):
        observe(self, record)
        if record.steps == 30:
            read = ("import sys; from gflow.store import TrajectoryFile; s = TrajectoryFile(sys.argv[1]).summary(); "
                    "print(s['step'], s['t'], s['train_loss'], s['saved_t'])")
            seen.append(subprocess.run([sys.executable, "-c", read, str(path)], capture_output=True, text=True))
            seen.append((record.ev.t, float(record.ev.aux["loss"])))

    monkeypatch.setattr(writer_module.TrajectoryWriter, "on_step", spy)
    gflow.run(CFG.replace(saves=1, save_t_min=CFG.t_end), path, progress=False)  # saves at t = 0 and t_end only
    proc, (t, loss) = seen
    assert proc.returncode == 0, proc.stderr
    step, t_read, loss_read, saved_t = proc.stdout.split()
    assert int(step) == 30 and float(t_read) == t and float(loss_read) == loss and float(saved_t) == 0.0


@pytest.mark.parametrize("derivatives", [False, True])
def test_a_row_saved_without_its_state_holds_one_vector_until_the_next_and_the_run_ending_on_it_stores_it(
        tmp_path, derivatives):
    import torch

    from solvers.events import Stop
    from solvers.observers import SaveRecord

    flow = gflow.build(CFG.replace(state_saves=2, save_derivatives=derivatives))
    w = writer_module.TrajectoryWriter(tmp_path / "r.h5", flow, scheduled=[0.0, 1.0, 2.0])  # states at saves 0 and 2
    ev = flow.evaluate(0.0, flow.y0)
    w.on_save(SaveRecord(0.0, ev.y, ev.dydt, ev, ev, index=0, steps=0, evals=1, wall=0.0))
    assert w._last_row is None  # the row holds its state: nothing to keep
    # An interpolated save's y and dy/dt are two rows of one tensor (the dense output's one pass).
    pair = torch.stack([flow.y0 + 1e-3, torch.full_like(flow.y0, 2.0)])
    w.on_save(SaveRecord(1.0, pair[0], pair[1], None, ev, index=1, steps=1, evals=2, wall=0.1))
    y, dydt = w._last_row
    assert torch.equal(y, pair[0]) and y.untyped_storage().nbytes() == y.nbytes  # not the pair's storage
    assert (dydt is not None) == derivatives
    w.finish(Stop("finished", "a stop event fired at that save"), None)
    traj = gflow.open(tmp_path / "r.h5")
    assert np.array_equal(traj.read("saves/state")[-1], pair[0].numpy())
    assert traj.read("saves/has_state")[-1] == 1.0
    if derivatives:
        assert np.array_equal(traj.read("saves/dstate")[-1], pair[1].numpy())
