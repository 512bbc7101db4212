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
