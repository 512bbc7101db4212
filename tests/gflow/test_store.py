"""The file contract: what readers reject, and that random input only gives clean errors."""

import shutil
import threading

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gflow
from gflow import FileFormatError, GflowError, RunConfig
from gflow.config import _TYPES

CFG = RunConfig(ptr=40, pte=10, width=8, t_end=5.0, saves=5)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return gflow.run(CFG, tmp_path_factory.mktemp("store") / "good.h5", progress=False).path


def _copy(good, tmp_path, name="x.h5"):
    path = tmp_path / name
    shutil.copy(good, path)
    return path


def test_a_file_of_another_format_is_rejected_by_name(good, tmp_path):
    path = _copy(good, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(FileFormatError, match="x.h5: not a gflow trajectory"):
        gflow.open(path)


def test_a_newer_format_version_asks_for_an_upgrade(good, tmp_path):
    path = _copy(good, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(FileFormatError, match="format version 99; this gflow reads versions 2, 3 .upgrade gflow."):
        gflow.open(path)


def test_a_version_1_file_is_rejected_without_an_upgrade_hint(good, tmp_path):
    path = _copy(good, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(FileFormatError, match=r"format version 1; this gflow reads versions 2, 3$"):
        gflow.open(path)


def _as_version_2(path):
    """What gflow wrote before version 3: no /steps/error_ratio."""
    with h5py.File(path, "r+") as f:
        del f["steps/error_ratio"]
        f.attrs["format_version"] = 2


def test_a_version_2_file_reads_with_nan_error_ratios(good, tmp_path):
    path = _copy(good, tmp_path)
    _as_version_2(path)
    traj = gflow.open(path)
    new = gflow.open(good)
    assert traj.steps["error_ratio"].isna().all()
    assert traj.steps.drop(columns="error_ratio").equals(new.steps.drop(columns="error_ratio"))


def test_resuming_a_version_2_file_upgrades_it_in_place(tmp_path):
    cfg = CFG.replace(solver="chebyshev", rtol=1e-5, atol=1e-8)
    part = gflow.run(cfg.replace(max_steps=5), tmp_path / "v2.h5", progress=False)
    _as_version_2(part.path)
    done = gflow.resume(part.path, max_steps=10**6, progress=False)
    assert done.status == "finished"
    with h5py.File(done.path, "r") as f:
        assert f.attrs["format_version"] == 3
    ratios = done.steps["error_ratio"].to_numpy()
    assert np.isnan(ratios[:5]).all() and np.isfinite(ratios[5:]).all() and len(ratios) > 5


def test_the_step_table_records_the_ratio_the_controller_measured(tmp_path):
    """Accepted steps have every ratio at most 1; a ratio the controller does not measure is NaN."""
    cheb = gflow.run(CFG.replace(solver="chebyshev", rtol=1e-4, atol=1e-7), tmp_path / "c.h5", progress=False).steps
    paper = gflow.run(CFG, tmp_path / "p.h5", progress=False).steps
    assert (cheb["error_ratio"] <= 1).all() and (cheb["error_ratio"] > 0).any()
    assert cheb["dgrad_ratio"].isna().all()
    assert paper["error_ratio"].isna().all() and (paper["dgrad_ratio"] < 1).all()


def test_a_missing_dataset_is_named(good, tmp_path):
    path = _copy(good, tmp_path)
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


def test_a_save_table_shorter_than_the_save_times_is_damage(good, tmp_path):
    path = _copy(good, tmp_path)
    with h5py.File(path, "r+") as f:
        f["saves/f_train"].resize(2, axis=0)
    with pytest.raises(FileFormatError, match="/saves/f_train has fewer rows"):
        gflow.open(path)


def test_rows_past_the_commit_marker_are_not_shown(good, tmp_path):
    """What a reader sees while a save is half-written: tables one row ahead of saves/t."""
    path = _copy(good, tmp_path)
    with h5py.File(path, "r+") as f:
        n = f["saves/t"].shape[0]
        f["saves/t"].resize(n - 1, axis=0)
    traj = gflow.open(path)
    assert len(traj) == n - 1
    assert len(traj.read("saves/state")) == n - 1 and len(traj.saves) == n - 1
    with pytest.raises(IndexError):
        traj.outputs(n - 1)


def test_summary_is_status_and_the_last_saves_scalars(good):
    traj = gflow.open(good)
    s = traj.summary()
    assert s["status"] == "finished" and s["stop_reason"] == "reached t_end"
    assert s["t"] == traj.save_times[-1] and s["evals"] == traj.steps["evals"].iloc[-1]
    assert s["test_err"] == traj.read("saves/test_err")[-1]


def test_the_file_records_versions_and_device(good):
    attrs = gflow.open(good).attrs
    assert "torch" in attrs["versions"] and "h5py" in attrs["versions"] and attrs["device"] == "cpu"


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


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.lists(st.integers(-3, 12), max_size=4))


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.sampled_from(sorted(_TYPES)), _VALUES, max_size=6))
def test_random_configs_are_valid_or_one_clean_error(data):
    try:
        cfg = RunConfig.from_dict(data)
    except GflowError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert RunConfig.from_json(cfg.to_json()) == cfg


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=300), st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_random_toml_text_is_a_config_or_one_clean_error(tmp_path, text):
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        RunConfig.load(path)
    except GflowError as e:
        assert str(e)


def test_config_parsing_never_evaluates_code(tmp_path):
    path = tmp_path / "evil.toml"
    path.write_text('dataset = "__import__(\'os\').system(\'touch pwned\')"\n')
    with pytest.raises(GflowError, match="dataset"):
        RunConfig.load(path)
    assert not (tmp_path / "pwned").exists()


def test_float_fields_reject_nan_and_infinite_budgets_are_clean(tmp_path):
    with pytest.raises(GflowError, match="alpha"):
        RunConfig(alpha=float("nan"))
    assert np.isfinite(RunConfig().t_end)
