"""A file from a stranger: it reads and writes only itself, its checksums are checked, and
every attribute and dataset the reader uses is validated before use (gflow.store.validate)."""

import json
import os

import h5py
import numpy as np
import pytest

import gflow
from gflow import FileFormatError

from ..commands import gflow_cli as _cli
from .conftest import CFG


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A resumable run (stopped by its step budget), with a checkpoint state of its own."""
    return gflow.run(CFG.replace(max_steps=7), tmp_path_factory.mktemp("stopped") / "s.h5", progress=False).path


def _replace(path, name, **create):
    with h5py.File(path, "r+") as f:
        old = f[name]
        shape, dtype = old.shape, old.dtype
        del f[name]
        f.create_dataset(name, shape=shape, dtype=dtype, **create)


def test_external_storage_never_overwrites_the_file_it_names(stopped, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious" * 4096)
    path = tmp_path / "x.h5"
    path.write_bytes(stopped.read_bytes())
    _replace(path, "checkpoint/state", external=[(str(victim), 0, h5py.h5f.UNLIMITED)])
    code, out, err = _cli(capsys, "run", "--resume", path)
    assert code == 2 and err.count("\n") == 1 and "/checkpoint/state keeps its data in another file" in err, err
    assert victim.read_bytes() == b"precious" * 4096


def test_external_storage_never_reads_the_file_it_names_into_a_listing(good, tmp_path, capsys):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(np.full(8, 123456.789).tobytes())
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "a.h5").write_bytes(good.read_bytes())
    (runs / "b.h5").write_bytes(good.read_bytes())
    _replace(runs / "b.h5", "saves/train_loss", external=[(str(secret), 0, h5py.h5f.UNLIMITED)])
    code, out, err = _cli(capsys, "query", runs, "--format", "json")
    assert code == 0, err
    rows = {r["file"]: r for r in json.loads(out)}
    assert rows["a.h5"]["status"] == "finished"
    assert rows["b.h5"]["status"] == "unreadable" and "another file" in rows["b.h5"]["stop_reason"]
    assert "123456" not in out


@pytest.mark.parametrize("kind", ["soft", "external", "virtual", "external-dataset"])
def test_links_and_data_from_elsewhere_are_refused_naming_the_path(good, tmp_path, kind):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(6.0)
    path = tmp_path / "x.h5"
    path.write_bytes(good.read_bytes())
    with h5py.File(path, "r+") as f:
        if kind == "soft":
            f["saves/extra"] = h5py.SoftLink("/init/w0")
        elif kind == "external":
            f["steps/extra"] = h5py.ExternalLink(str(other), "/x")
        elif kind == "virtual":
            layout = h5py.VirtualLayout(shape=(6,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(other), "x", shape=(6,))
            f.create_virtual_dataset("steps/extra", layout)
        else:
            f.create_dataset("steps/extra", shape=(6,), dtype="f8", external=[(str(other), 0, 48)])
    expected = {"soft": "/saves/extra is a soft link", "external": "/steps/extra is an external link",
                "virtual": "/steps/extra is a virtual dataset", "external-dataset": "/steps/extra keeps its data"}[kind]
    with pytest.raises(FileFormatError, match=expected):
        gflow.open(path)


def test_a_filter_plugin_named_by_a_file_is_refused(good, tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(good.read_bytes())
    with h5py.File(path, "r+") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((4,))
        dcpl.set_filter(32001, h5py.h5z.FLAG_OPTIONAL, (0,) * 7)  # Blosc: a plugin HDF5 would go and load
        space = h5py.h5s.create_simple((8,))
        h5py.h5d.create(f["steps"].id, b"extra", h5py.h5t.NATIVE_DOUBLE, space, dcpl=dcpl)
    with pytest.raises(FileFormatError, match="/steps/extra uses HDF5 filter 32001, a plugin"):
        gflow.open(path)


def test_a_link_planted_at_the_lock_creates_nothing(tmp_path, capsys):
    target = tmp_path / "elsewhere" / "created"
    target.parent.mkdir()
    (tmp_path / "y.h5.lock").symlink_to(target)
    code, out, err = _cli(capsys, "run", "--ptr", "20", "--pte", "5", "--width", "4", "--t-end", "1", "--out",
                          tmp_path / "y.h5")
    assert code == 2 and "y.h5.lock" in err and "symbolic link" in err and err.count("\n") == 1, err
    assert not target.exists() and not (tmp_path / "y.h5").exists()


def test_a_new_run_never_writes_in_place_of_a_link(good, tmp_path, capsys):
    (tmp_path / "out.h5").symlink_to(good)
    before = good.read_bytes()
    code, out, err = _cli(capsys, "run", "--ptr", "20", "--pte", "5", "--width", "4", "--t-end", "1", "--out",
                          tmp_path / "out.h5", "--overwrite")
    assert code == 2 and "is a symbolic link" in err and err.count("\n") == 1, err
    assert (tmp_path / "out.h5").is_symlink() and good.read_bytes() == before


def test_resume_neither_follows_a_planted_temporary_nor_replaces_a_link(stopped, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    path = tmp_path / "x.h5"
    path.write_bytes(stopped.read_bytes())
    (tmp_path / "x.h5.resume.tmp").symlink_to(victim)  # the name resume used before this version
    traj = gflow.resume(path, max_steps=10**6)
    assert traj.status == "finished" and victim.read_bytes() == b"keep me"
    assert path.is_file() and not path.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt", "x.h5", "x.h5.resume.tmp"]
    link = tmp_path / "link.h5"
    link.symlink_to(stopped)
    before = stopped.read_bytes()
    code, out, err = _cli(capsys, "run", "--resume", link)
    assert code == 2 and "symbolic link" in err and err.count("\n") == 1, err
    assert link.is_symlink() and stopped.read_bytes() == before


def test_every_dataset_a_run_writes_carries_a_checksum(good, stopped, tmp_path):
    resumed = tmp_path / "r.h5"
    resumed.write_bytes(stopped.read_bytes())
    gflow.resume(resumed, max_steps=10**6)
    for path in (good, resumed):
        unchecked = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: unchecked.append(name) if isinstance(obj, h5py.Dataset) and obj.size
                         and not obj.fletcher32 else None)
        assert unchecked == [], (path.name, unchecked)


def _flip_a_byte_of(path, name):
    with h5py.File(path, "r") as f:
        ds = f[name]
        offset = ds.id.get_chunk_info(0).byte_offset if ds.chunks else ds.id.get_offset()
    with open(path, "r+b") as raw:
        raw.seek(offset + 3)
        byte = raw.read(1)
        raw.seek(offset + 3)
        raw.write(bytes([byte[0] ^ 0x10]))


def test_a_flipped_bit_in_stored_data_is_one_error_naming_the_dataset(good, tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(good.read_bytes())
    _flip_a_byte_of(path, "saves/f_train")
    traj = gflow.open(path)  # the flip is in data the checks do not read
    with pytest.raises(FileFormatError, match="/saves/f_train.*checksum"):
        traj.outputs(0)


def test_a_checkpoint_state_that_does_not_match_its_digest_is_not_resumed(stopped, tmp_path, capsys):
    path = tmp_path / "x.h5"
    path.write_bytes(stopped.read_bytes())
    with h5py.File(path, "r+") as f:
        slot = int(f["checkpoint/current"][0])
        row = int(f["checkpoint/scalars"][slot][6])
        if row >= 0:
            f["saves/state"][row, 0] += 1.0
        else:
            f["checkpoint/state"][slot, 0] += 1.0  # rewritten with a fresh checksum: only the digest can tell
    before = path.read_bytes()
    code, out, err = _cli(capsys, "run", "--resume", path)
    assert code == 2 and err.count("\n") == 1 and "does not match its SHA-256 digest" in err, err
    assert path.read_bytes() == before


def _mutated(good, tmp_path, change):
    path = tmp_path / "x.h5"
    path.write_bytes(good.read_bytes())
    with h5py.File(path, "r+") as f:
        change(f)
    return path


def _set(name, value):
    def change(f):
        f[name][...] = value
    return change


def _del_attr(name):
    def change(f):
        del f.attrs[name]
    return change


def _huge(f):
    f["saves/t"].resize(2**45, axis=0)


MALFORMED = {
    "checkpoint current 5": (_set("checkpoint/current", 5), r"/checkpoint/current should be -1, 0 or 1"),
    "NaN last save step": (lambda f: f["saves/step"].__setitem__(-1, np.nan), r"/saves/step should be finite"),
    "no config": (_del_attr("config"), r"attribute 'config' should be JSON text"),
    "non-UTF-8 status": (_set("run/status", b"\xff\xfe"), r"/run/status should be UTF-8 text"),
    "unknown status": (_set("run/status", b"exploded"), r"/run/status should be one of running"),
    "declared 2^45 saves": (_huge, r"/saves/t declares shape \(35184372088832,\)"),
    "nested JSON": (lambda f: f.attrs.__setitem__("model", "[" * 100_000), r"attribute 'model' is not valid JSON"),
    "x_shape text": (lambda f: f.attrs.__setitem__("data", json.dumps({"source": "builtin", "x_shape": "64"})),
                     r"field 'x_shape' should be a JSON list"),
    "outputs wrong shape": (lambda f: (f["saves/f_train"].resize((f["saves/f_train"].shape[0], 3))),
                            r"/saves/f_train should be of shape"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_file_is_one_line_naming_the_path_inside_it(good, tmp_path, capsys, case):
    change, message = MALFORMED[case]
    path = _mutated(good, tmp_path, change)
    with pytest.raises(FileFormatError, match=message):
        gflow.open(path)
    code, out, err = _cli(capsys, "show", path)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err


def test_a_listing_survives_its_worst_member(good, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i in range(6):
        (runs / f"good{i}.h5").write_bytes(good.read_bytes())
    for case in sorted(MALFORMED):
        path = _mutated(good, tmp_path, MALFORMED[case][0])
        os.replace(path, runs / f"bad {case}.h5")
    (runs / "flipped.h5").write_bytes(good.read_bytes())
    _flip_a_byte_of(runs / "flipped.h5", "saves/step")  # found past the checks the listing's summary reads
    table = gflow.catalog(runs)
    assert (table["status"] == "finished").sum() == 6
    assert (table["status"] == "unreadable").sum() == len(MALFORMED) + 1
    assert "/saves/step cannot be read: a checksum mismatch" in table.loc[table["file"] == "flipped.h5", "stop_reason"].item()
    code, out, err = _cli(capsys, "query", runs, "--format", "csv")
    assert code == 0 and out.count("\n") == len(table) + 1, err
    code, out, err = _cli(capsys, "plot", runs, "--kind", "test-error", "-o", tmp_path / "f.png")
    assert code == 0 and (tmp_path / "f.png").stat().st_size > 0, err


def test_a_figure_draws_the_other_runs_when_one_fails_its_checksum_past_the_catalog(tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    for alpha in (0.5, 2.0):
        gflow.run(CFG.replace(alpha=alpha, kernel_n=10, kernel_every=1), runs / f"a{alpha}.h5", progress=False)
    _flip_a_byte_of(runs / "a0.5.h5", "kernel/theta")  # an early snapshot: the catalog reads only the last
    assert list(gflow.catalog(runs)["status"]) == ["finished", "finished"]
    code, out, err = _cli(capsys, "plot", runs, "--kind", "alignment", "-o", tmp_path / "f.png")
    assert code == 0 and (tmp_path / "f.png").stat().st_size > 0, err
