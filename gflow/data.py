"""Data sets: an embedded default, local IDX files, a synthetic teacher, and the user's arrays.

Every built-in data set becomes a two-class task with labels +-1 (``labels`` parity or
halves) or a k-class task with labels 0..k-1 (``labels = "classes"``), drawn reproducibly
from ``data_seed``: samples are shuffled with that seed and the first ``ptr`` go to the
train set, the next ``pte`` to the test set (for IDX data the test set is drawn from the
t10k files). Inputs are centred on the train mean, optionally reduced by PCA (fitted on the
train set) and scaled so that every input has norm sqrt(d).

The user's own data (arrays, or a loader named in the config) are taken as they are:
:func:`from_arrays`.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .errors import GflowError

DEFAULT_DIRS = {
    "fashion-mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}
_HOW_TO_GET = {
    "fashion-mnist": "install Debian's package (apt-get install dataset-fashion-mnist) or pass --data-dir",
    "mnist": "put the MNIST IDX files there or pass --data-dir",
}


@dataclass(frozen=True)
class Dataset:
    """Train and test inputs and labels; for built-in data, which raw samples were drawn
    (indices into the source pools) and their original classes (None for the user's data)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_indices: np.ndarray | None = None
    test_indices: np.ndarray | None = None
    classes_train: np.ndarray | None = None
    classes_test: np.ndarray | None = None
    n_classes: int | None = None  # k of a built-in k-class task (labels = "classes")

    @property
    def classes(self) -> int:
        """k for labels 0..k-1 (integer labels), else 1 (one output)."""
        if self.n_classes is not None:
            return self.n_classes
        if self.y_train.dtype.is_floating_point or self.y_train.dim() != 1 or not len(self.y_train):
            return 1
        return int(max(int(self.y_train.max()), int(self.y_test.max()) if len(self.y_test) else 0)) + 1

    def digest(self) -> str:
        """SHA-256 of the inputs and labels actually used: two runs saw the same data iff equal."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(t.detach().cpu().double().numpy().tobytes())
        return h.hexdigest()


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip or plain) without pickle."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise GflowError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise GflowError(f"{path}: truncated IDX file ({body.size} values for shape {shape})")
    return body.reshape(shape)


def _idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    def find(stem: str) -> Path:
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                return directory / name
        raise GflowError(f"{directory}: missing {stem}[.gz]")

    images = read_idx(find(f"{prefix}-images-idx3-ubyte")).astype(np.float64)
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return images.reshape(len(images), -1), labels


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1797 8x8 images, classes 0-9) as float64 pixels and
    int64 classes: the CSV that ``sklearn.datasets.load_digits`` reads, read the same way
    (``np.loadtxt``) without importing scikit-learn, whose import is 0.5 s of every run's
    start on this project's CPU; through ``load_digits`` where the file is not found."""
    spec = importlib.util.find_spec("sklearn")  # locates the package, imports nothing
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz" if spec else None
    if path is not None and path.is_file():
        table = np.loadtxt(path, delimiter=",")
        return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    x, c = load_digits(return_X_y=True)
    return x.astype(np.float64), c.astype(np.int64)


def _raw_pools(cfg: RunConfig) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """(train pool, separate test pool or None when test samples come from the same pool)."""
    if cfg.dataset == "digits":
        return digits(), None
    if cfg.dataset == "teacher":
        # Gaussian inputs labelled by a random two-layer tanh teacher, split at its median.
        rng = np.random.default_rng(cfg.data_seed)
        x = rng.standard_normal((cfg.ptr + cfg.pte, cfg.dim))
        score = np.tanh(x @ rng.standard_normal((cfg.dim, 32)) / np.sqrt(cfg.dim)) @ rng.standard_normal(32)
        return (x, (score > np.median(score)).astype(np.int64)), None
    directory = Path(cfg.data_dir or DEFAULT_DIRS[cfg.dataset])
    if not directory.is_dir():
        raise GflowError(f"data directory {directory} for {cfg.dataset} not found: {_HOW_TO_GET[cfg.dataset]}")
    return _idx_pair(directory, "train"), _idx_pair(directory, "t10k")


def _labels(classes: np.ndarray, kept: np.ndarray, scheme: str) -> np.ndarray:
    """parity: +1 for an even class label; halves: +1 for the first half of the kept
    classes; classes: the index 0..k-1 of the class among the kept ones."""
    if scheme == "classes":
        return np.searchsorted(kept, classes).astype(np.int64)
    if scheme == "parity":
        return np.where(classes % 2 == 0, 1.0, -1.0)
    first_half = kept[: len(kept) // 2]
    return np.where(np.isin(classes, first_half), 1.0, -1.0)


def _select(x: np.ndarray, c: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.flatnonzero(np.isin(c, kept))
    return x[idx], c[idx], idx


def load(cfg: RunConfig, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> Dataset:
    """The train and test sets of ``cfg`` (dataset, downsample, classes, labels, ptr, pte, pca, data_seed)."""
    (x, c), test_pool = _raw_pools(cfg)
    if cfg.downsample > 1:
        x = _downsample(x, cfg.downsample)
        test_pool = None if test_pool is None else (_downsample(test_pool[0], cfg.downsample), test_pool[1])
    kept = np.array(sorted(cfg.classes)) if cfg.classes is not None else np.unique(c)
    missing = set(kept) - set(np.unique(c))
    if missing:
        raise GflowError(f"classes = {sorted(kept.tolist())}: {cfg.dataset} has no class {sorted(missing)[0]}")
    x, c, pool_idx = _select(x, c, kept)
    rng = np.random.default_rng(cfg.data_seed)
    order = rng.permutation(len(x))
    if test_pool is None:
        if cfg.ptr + cfg.pte > len(x):
            raise GflowError(f"ptr + pte = {cfg.ptr + cfg.pte} exceeds the {len(x)} samples of {cfg.dataset} (classes {kept.tolist()})")
        tr, te = order[: cfg.ptr], order[cfg.ptr : cfg.ptr + cfg.pte]
        xt, ct, test_idx = x[te], c[te], pool_idx[te]
    else:
        if cfg.ptr > len(x):
            raise GflowError(f"ptr = {cfg.ptr} exceeds the {len(x)} training samples of {cfg.dataset} (classes {kept.tolist()})")
        tr = order[: cfg.ptr]
        xt_all, ct_all, idx_all = _select(*test_pool, kept)
        if cfg.pte > len(xt_all):
            raise GflowError(f"pte = {cfg.pte} exceeds the {len(xt_all)} test samples of {cfg.dataset} (classes {kept.tolist()})")
        te = rng.permutation(len(xt_all))[: cfg.pte]
        xt, ct, test_idx = xt_all[te], ct_all[te], idx_all[te]
    xtr, ctr, train_idx = x[tr], c[tr], pool_idx[tr]

    mean = xtr.mean(axis=0)
    xtr, xt = xtr - mean, xt - mean
    if cfg.pca is not None and cfg.pca > xtr.shape[1]:
        raise GflowError(f"pca = {cfg.pca}: must be <= the input dimension of {cfg.dataset} ({xtr.shape[1]})")
    if cfg.pca is not None:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=cfg.pca, random_state=cfg.data_seed).fit(xtr)
        xtr, xt = pca.transform(xtr), pca.transform(xt)
    xtr, xt = _unit_rms(xtr), _unit_rms(xt)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype if a.dtype.kind == "f" else torch.int64, device=device)

    return Dataset(
        x_train=tensor(xtr),
        y_train=tensor(_labels(ctr, kept, cfg.labels)),
        x_test=tensor(xt.reshape(len(xt), xtr.shape[1])),
        y_test=tensor(_labels(ct, kept, cfg.labels)),
        train_indices=train_idx,
        test_indices=test_idx,
        classes_train=ctr,
        classes_test=ct,
        n_classes=len(kept) if cfg.labels == "classes" else None,
    )


def _downsample(x: np.ndarray, k: int) -> np.ndarray:
    """Average-pool flattened square images over k x k blocks (s x s -> s/k x s/k)."""
    side = int(round(np.sqrt(x.shape[1])))
    if side * side != x.shape[1] or side % k:
        raise GflowError(f"downsample = {k}: needs square images whose side is a multiple of {k}, "
                         f"but the inputs have d = {x.shape[1]}")
    s = side // k
    return x.reshape(len(x), s, k, s, k).mean(axis=(2, 4)).reshape(len(x), s * s)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    """Scale each row to norm sqrt(d) (rows of zeros stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.sqrt(x.shape[1]) / np.where(norms > 0, norms, 1.0)


def _tensor(name: str, a: object) -> torch.Tensor:
    """A user's array (torch tensor, numpy array or nested lists) as a tensor on the CPU."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    else:
        arr = np.asarray(a)
        if arr.dtype.kind not in "biuf":
            raise GflowError(f"data: {name} must be numbers (a tensor or an array), got {arr.dtype} entries")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or t.dim() == 0:
        raise GflowError(f"data: {name} must be a real array with one row per sample, got shape {tuple(t.shape)}")
    if t.is_floating_point() and not bool(t.isfinite().all()):
        raise GflowError(f"data: {name} holds NaN or infinite values")
    return t


def from_arrays(
    x_train: object, y_train: object, x_test: object = None, y_test: object = None,
    dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
) -> Dataset:
    """The user's data as given: inputs of any shape (n, ...) (floating inputs in ``dtype``;
    integer inputs, e.g. tokens, kept as integers), labels (n,) or (n, ...) (integers stay
    integers: class labels; floats in ``dtype``). The test split is optional (None: empty)."""
    xtr, ytr = _tensor("x_train", x_train), _tensor("y_train", y_train)
    if (x_test is None) != (y_test is None):
        raise GflowError("data: give both x_test and y_test, or neither")
    if x_test is None:
        xte, yte = xtr[:0], ytr[:0]
    else:
        xte, yte = _tensor("x_test", x_test), _tensor("y_test", y_test)
    for x, y, split in ((xtr, ytr, "train"), (xte, yte, "test")):
        if len(x) != len(y):
            raise GflowError(f"data: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels")
    if not len(xtr):
        raise GflowError("data: the training set is empty")
    if xte.shape[1:] != xtr.shape[1:] or yte.shape[1:] != ytr.shape[1:]:
        raise GflowError(f"data: test samples of shape {tuple(xte.shape[1:])} with labels {tuple(yte.shape[1:])} do "
                         f"not match train samples {tuple(xtr.shape[1:])} with labels {tuple(ytr.shape[1:])}")

    def placed(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype if t.is_floating_point() else torch.int64)

    return Dataset(placed(xtr), placed(ytr), placed(xte), placed(yte))


def from_loader(result: object, source: str) -> tuple[object, object, object, object]:
    """The four arrays of what a data loader returned: (x_train, y_train, x_test, y_test) or
    (x_train, y_train) (no test split)."""
    if isinstance(result, (tuple, list)) and len(result) in (2, 4):
        return (*result, None, None)[:4]  # type: ignore[return-value]
    got = f"a {type(result).__name__}" + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else "")
    raise GflowError(f"data = {source!r}: the loader must return (x_train, y_train, x_test, y_test) or "
                     f"(x_train, y_train), got {got}")


def with_labels_for(data: Dataset, outputs: int, dtype: torch.dtype) -> Dataset:
    """Labels in the form a network with ``outputs`` outputs trains on: for one output,
    floating (integer +-1 labels become +-1.0); for k outputs, integer class labels (floats
    that are whole numbers become integers)."""

    def convert(y: torch.Tensor) -> torch.Tensor:
        if outputs == 1 and not y.is_floating_point():
            return y.to(dtype)
        if outputs > 1 and y.is_floating_point() and bool((y == y.round()).all()):
            return y.long()
        return y

    return dataclasses.replace(data, y_train=convert(data.y_train), y_test=convert(data.y_test))
