"""Data sets: an embedded default, local IDX files, and a synthetic teacher.

Every data set becomes a binary task with labels +-1, drawn reproducibly from
``data_seed``: samples are shuffled with that seed and the first ``ptr`` go to the train
set, the next ``pte`` to the test set (for IDX data the test set is drawn from the t10k
files). Inputs are centred on the train mean, optionally reduced by PCA (fitted on the
train set) and scaled so that every input has norm sqrt(d).
"""

from __future__ import annotations

import gzip
import hashlib
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
    """Train and test inputs and labels (+-1), with which raw samples were drawn."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    train_indices: np.ndarray
    test_indices: np.ndarray
    classes_train: np.ndarray
    classes_test: np.ndarray

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


def _raw_pools(cfg: RunConfig) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """(train pool, separate test pool or None when test samples come from the same pool)."""
    if cfg.dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        return (digits.data.astype(np.float64), digits.target.astype(np.int64)), None
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


def _binary_labels(classes: np.ndarray, kept: np.ndarray, scheme: str) -> np.ndarray:
    """parity: +1 for an even class label; halves: +1 for the first half of the kept classes."""
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
    if cfg.pca is not None:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=cfg.pca, random_state=cfg.data_seed).fit(xtr)
        xtr, xt = pca.transform(xtr), pca.transform(xt)
    xtr, xt = _unit_rms(xtr), _unit_rms(xt)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dtype, device=device)

    return Dataset(
        x_train=tensor(xtr),
        y_train=tensor(_binary_labels(ctr, kept, cfg.labels)),
        x_test=tensor(xt.reshape(len(xt), xtr.shape[1])),
        y_test=tensor(_binary_labels(ct, kept, cfg.labels)),
        train_indices=train_idx,
        test_indices=test_idx,
        classes_train=ctr,
        classes_test=ct,
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
