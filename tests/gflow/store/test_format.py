"""The file contract (gflow.store.format): what readers reject, versions, and that damaged
or random input only ever gives clean errors."""

import threading

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gflow
from gflow import FileFormatError, GflowError

from .conftest import CFG


def test_a_file_of_another_format_is_rejected_by_name(copy):
    path = copy()
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(FileFormatError, match="x.h5: not a gflow trajectory"):
        gflow.open(path)


def test_a_newer_format_version_asks_for_an_upgrade(copy):
    path = copy()
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(FileFormatError, match="format version 99; this gflow reads versions 2, 3, 4, 5 .upgrade gflow."):
        gflow.open(path)


def test_a_version_1_file_is_rejected_without_an_upgrade_hint(copy):
    path = copy()
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(FileFormatError, match=r"format version 1; this gflow reads versions 2, 3, 4, 5$"):
        gflow.open(path)


def _as_version_3(path):
    """What gflow wrote before version 4: no model, data and loss descriptions, no checkpoint."""
    with h5py.File(path, "r+") as f:
        for name in ("model", "data", "loss"):
            del f.attrs[name]
        for name in ("checkpoint", "saves/forwards", "saves/interpolated", "saves/has_state"):
            del f[name]
        f.attrs["format_version"] = 3


def _as_version_2(path):
    """What gflow wrote before version 3: as version 3, and no /steps/error_ratio."""
    _as_version_3(path)
    with h5py.File(path, "r+") as f:
        del f["steps/error_ratio"]
        f.attrs["format_version"] = 2


def test_a_version_3_file_reads_as_a_built_in_run_and_its_model_is_rebuilt(good, copy):
    path = copy()
    _as_version_3(path)
    old, new = gflow.open(path), gflow.open(good)
    assert old.format_version == 3
    assert old.sources["model"] == {"source": "builtin", "arch": "fc"}
    assert old.sources["loss"] == {"source": "builtin", "name": "softhinge"}
    assert old.steps.equals(new.steps) and np.array_equal(old.read("saves/state"), new.read("saves/state"))
    assert np.array_equal(old.linearization_gap()[1], new.linearization_gap()[1])


def test_resuming_a_version_3_file_adds_the_descriptions_and_stamps_version_4(tmp_path):
    part = gflow.run(CFG.replace(max_steps=5), tmp_path / "v3.h5", progress=False)
    described = part.sources
    _as_version_3(part.path)
    done = gflow.resume(part.path, max_steps=10**6, progress=False)
    assert done.status == "finished" and done.format_version == 5
    assert done.sources == described and done.checkpoint()["t"] == CFG.t_end


def test_a_version_2_file_reads_with_nan_error_ratios(good, copy):
    path = copy()
    _as_version_2(path)
    traj = gflow.open(path)
    new = gflow.open(good)
    assert traj.steps["error_ratio"].isna().all()
    assert traj.steps.drop(columns="error_ratio").equals(new.steps.drop(columns="error_ratio"))


def test_resuming_a_version_2_file_upgrades_it_in_place(tmp_path):
    cfg = CFG.replace(solver="chebyshev", rtol=1e-5, atol=1e-8)
    part = gflow.run(cfg.replace(max_steps=5), tmp_path / "v2.h5", progress=False)
    _as_version_2(part.path)
    old_steps = int(part.read("saves/step")[-1])  # a version-2 file resumes from its last save
    done = gflow.resume(part.path, max_steps=10**6, progress=False)
    assert done.status == "finished"
    assert done.format_version == 5
    ratios = done.steps["error_ratio"].to_numpy()
    assert np.isnan(ratios[:old_steps]).all() and np.isfinite(ratios[old_steps:]).all() and len(ratios) > old_steps


def test_a_missing_or_damaged_description_is_named(copy):
    path = copy()
    with h5py.File(path, "r+") as f:
        f.attrs["model"] = "{not json"
    with pytest.raises(FileFormatError, match="attribute 'model' is not valid JSON"):
        gflow.open(path)


def test_a_missing_dataset_is_named(copy):
    path = copy()
    with h5py.File(path, "r+") as f:
        del f["saves/f_test"]
    with pytest.raises(FileFormatError, match="missing dataset /saves/f_test"):
        gflow.open(path)


def test_a_truncated_file_is_one_clear_error(good, tmp_path):
    data = good.read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FileFormatError, match="cut.h5: not an HDF5 file, or truncated"):
        gflow.open(path)


def test_a_file_truncated_only_for_a_moment_is_read(good, tmp_path):
    """A live writer's flush can leave the file shorter than its superblock says for a
    moment; the reader waits for it instead of calling it damaged."""
    data = good.read_bytes()
    path = tmp_path / "flushing.h5"
    path.write_bytes(data[: len(data) // 2])
    threading.Timer(0.05, path.write_bytes, args=(data,)).start()
    assert len(gflow.open(path)) == len(gflow.open(good))


def test_a_save_table_shorter_than_the_save_times_is_damage(copy):
    path = copy()
    with h5py.File(path, "r+") as f:
        f["saves/f_train"].resize(2, axis=0)
    with pytest.raises(FileFormatError, match="/saves/f_train should be a table of at least"):
        gflow.open(path)


def test_rows_past_the_commit_marker_are_not_shown(copy):
    """What a reader sees while a save is half-written: tables one row ahead of saves/t."""
    path = copy()
    with h5py.File(path, "r+") as f:
        n = f["saves/t"].shape[0]
        f["saves/t"].resize(n - 1, axis=0)
    traj = gflow.open(path)
    assert len(traj) == n - 1
    assert len(traj.read("saves/state")) == n - 1 and len(traj.saves) == n - 1
    with pytest.raises(IndexError):
        traj.outputs(n - 1)

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=4096))
def test_random_bytes_give_a_clean_error(tmp_path, data):
    path = tmp_path / "random.h5"
    path.write_bytes(data)
    with pytest.raises(FileFormatError):
        gflow.open(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=8))
def test_damaged_trajectories_give_a_clean_error_or_a_readable_file(good, tmp_path, cut, flips):
    """Truncate a real trajectory and overwrite random bytes: opening and querying it either
    works or raises FileFormatError / IndexError, never an h5py or numpy internal error."""
    data = bytearray(good.read_bytes())
    for where, byte in flips:
        data[int(where * (len(data) - 1))] = byte
    data = data[: max(1, int(cut * len(data)))] if cut < 1.0 else data
    path = tmp_path / "damaged.h5"
    path.write_bytes(bytes(data))
    try:
        traj = gflow.open(path)
        traj.status, traj.summary(), traj.outputs(-1), traj.steps
    except (FileFormatError, GflowError, IndexError):
        pass
