import gzip
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gflow import GflowError, RunConfig
from gflow.data import load, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_digits_default_is_parity_labelled_and_normalised():
    d = load(RunConfig(ptr=300, pte=100))
    assert d.x_train.shape == (300, 64) and d.x_test.shape == (100, 64)
    assert set(d.y_train.tolist()) == {-1.0, 1.0}
    assert np.array_equal(d.y_train.numpy(), np.where(d.classes_train % 2 == 0, 1.0, -1.0))
    assert np.allclose(d.x_train.norm(dim=1).numpy(), 8.0)
    assert len(set(d.train_indices) & set(d.test_indices)) == 0


def test_data_seed_fixes_the_samples_and_changing_it_changes_them():
    a, b = load(RunConfig(ptr=50, pte=20)), load(RunConfig(ptr=50, pte=20))
    c = load(RunConfig(ptr=50, pte=20, data_seed=1))
    assert a.digest() == b.digest() != c.digest()
    assert not np.array_equal(a.train_indices, c.train_indices)


def test_class_subsets_halves_labels_and_pca():
    d = load(RunConfig(ptr=100, pte=50, classes=(3, 5, 7, 8), labels="halves", pca=6))
    assert set(np.unique(d.classes_train)) <= {3, 5, 7, 8}
    assert np.array_equal(d.y_train.numpy(), np.where(np.isin(d.classes_train, [3, 5]), 1.0, -1.0))
    assert d.x_train.shape == (100, 6)


def test_too_many_samples_is_a_clear_error():
    with pytest.raises(GflowError, match="ptr \\+ pte = 2000 exceeds the 1797 samples of digits"):
        load(RunConfig(ptr=1500, pte=500))


def test_unknown_class_is_a_clear_error():
    with pytest.raises(GflowError, match="has no class 12"):
        load(RunConfig(classes=(1, 12)))


def test_missing_idx_directory_says_how_to_get_the_data(tmp_path):
    with pytest.raises(GflowError, match="dataset-fashion-mnist"):
        load(RunConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "nowhere")))


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_reads_what_was_written_and_rejects_truncation(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    _write_idx(tmp_path / "x.gz", images)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), images)
    raw = gzip.open(tmp_path / "x.gz").read()
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(GflowError, match="truncated"):
        read_idx(tmp_path / "short")


def test_idx_dataset_from_a_directory_of_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 4, 4)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    d = load(RunConfig(dataset="mnist", data_dir=str(tmp_path), ptr=30, pte=10))
    assert d.x_train.shape == (30, 16) and d.x_test.shape == (10, 16)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST absent: apt-get install dataset-fashion-mnist")
def test_fashion_mnist_two_class_from_the_debian_package():
    d = load(RunConfig(dataset="fashion-mnist", ptr=500, pte=200, labels="halves"))
    assert d.x_train.shape == (500, 784)
    assert np.allclose(d.x_test.norm(dim=1).numpy(), math.sqrt(784))
    assert 0.3 < float((d.y_train > 0).double().mean()) < 0.7


def test_teacher_set_is_balanced_and_reproducible():
    a = load(RunConfig(dataset="teacher", ptr=200, pte=100, dim=5))
    assert a.x_train.shape == (200, 5)
    assert a.digest() == load(RunConfig(dataset="teacher", ptr=200, pte=100, dim=5)).digest()
    assert abs(float(a.y_train.mean())) < 0.3


def test_digits_read_from_the_bundled_file_equal_scikit_learns_load_digits():
    from sklearn.datasets import load_digits

    from gflow.data import digits

    x, c = digits()
    reference = load_digits()
    assert x.dtype == np.float64 and c.dtype == np.int64
    assert np.array_equal(x, reference.data) and np.array_equal(c, reference.target)


def test_digits_fall_back_to_load_digits_where_the_bundled_file_is_not_found(monkeypatch):
    import importlib.util

    from sklearn.datasets import load_digits

    from gflow.data import digits

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    x, c = digits()
    assert np.array_equal(x, load_digits().data) and np.array_equal(c, load_digits().target)


def test_loading_the_default_data_does_not_import_scikit_learn():
    code = ("import sys; from gflow.config import RunConfig; from gflow.data import load; "
            "load(RunConfig()); print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_downsample_averages_square_blocks_of_each_image():
    from sklearn.datasets import load_digits

    from gflow.data import _downsample

    raw = load_digits().data[:5]
    pooled = _downsample(raw, 2)
    assert pooled.shape == (5, 16)
    images = raw.reshape(5, 8, 8)
    assert pooled[3, 1 * 4 + 2] == pytest.approx(images[3, 2:4, 4:6].mean())
    data = load(RunConfig(ptr=50, pte=10, downsample=2))
    assert data.x_train.shape == (50, 16) and data.x_test.shape == (10, 16)
    assert np.allclose(np.linalg.norm(data.x_train.numpy(), axis=1), 4.0)  # norm sqrt(d) after pooling


def test_downsample_that_does_not_divide_the_side_is_a_clear_error():
    with pytest.raises(GflowError, match="downsample = 3: needs square images whose side is a multiple of 3"):
        load(RunConfig(ptr=50, pte=10, downsample=3))
