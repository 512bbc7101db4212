"""The reader (gflow.store.reader): pure I/O on a stored run."""

import gflow


def test_summary_is_status_and_the_last_saves_scalars(good):
    traj = gflow.open(good)
    s = traj.summary()
    assert s["status"] == "finished" and s["stop_reason"] == "reached t_end"
    assert s["t"] == traj.save_times[-1] and s["evals"] == traj.steps["evals"].iloc[-1]
    assert s["test_err"] == traj.read("saves/test_err")[-1]


def test_the_file_records_versions_and_device(good):
    attrs = gflow.open(good).attrs
    assert "torch" in attrs["versions"] and "h5py" in attrs["versions"] and attrs["device"] == "cpu"


def test_a_run_resumes_with_the_threads_it_was_created_with_at_most_the_cores(copy):
    import json
    import os

    import h5py

    from gflow.store import TrajectoryFile

    def recorded(value):
        path = copy()
        with h5py.File(path, "r+") as f:
            versions = json.loads(f.attrs["versions"])
            versions["threads"] = value
            f.attrs["versions"] = json.dumps(versions)
        return TrajectoryFile(path).threads

    assert recorded(1) == 1
    assert recorded(10**9) == os.cpu_count()  # the file is input: never more threads than cores
    assert recorded("two") is None and recorded(0) is None and recorded(True) is None
    path = copy()
    with h5py.File(path, "r+") as f:
        f.attrs["versions"] = "not JSON"
    assert TrajectoryFile(path).threads is None
