"""A small residual CNN on 10-class Fashion-MNIST (digits when Fashion-MNIST is absent).

The model factory and the data loader that ``residual_cnn.toml`` names by reference:

    model = "examples.residual_cnn:model"     # called as model(**model_args)
    data = "examples.residual_cnn:data"       # called as data(**data_args)

Run the 2-seed sweep from the repository root:

    gflow sweep examples/residual_cnn.toml --out runs/residual-cnn --workers 2
    gflow query runs/residual-cnn --columns seed evals train_err test_err kernel_change
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FASHION = Path("/usr/share/datasets/fashion-mnist")


class Block(nn.Module):
    """x + conv(softplus(conv(softplus(x)))): a pre-activation residual block."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.softplus(self.conv1(F.softplus(x))))


class ResidualCNN(nn.Module):
    """A 3x3 stem, ``blocks`` residual blocks, global average pooling and a linear head to
    ``classes`` outputs: PyTorch's default initialisation, biases everywhere."""

    def __init__(self, channels: int, blocks: int, classes: int):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.Sequential(*(Block(channels) for _ in range(blocks)))
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.blocks(self.stem(x))
        return self.head(F.softplus(z).mean(dim=(2, 3)))


def model(channels: int = 8, blocks: int = 2, classes: int = 10) -> nn.Module:
    return ResidualCNN(channels, blocks, classes)


def _fashion(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from gflow.data import read_idx

    def images(name: str) -> np.ndarray:
        x = read_idx(FASHION / f"{name}-images-idx3-ubyte.gz").astype(np.float64) / 255.0
        k = 28 // side
        return x.reshape(len(x), side, k, side, k).mean(axis=(2, 4))

    return (images("train"), read_idx(FASHION / "train-labels-idx1-ubyte.gz"),
            images("t10k"), read_idx(FASHION / "t10k-labels-idx1-ubyte.gz"))


def data(n_train: int = 500, n_test: int = 500, side: int = 14, seed: int = 0):
    """(x_train, y_train, x_test, y_test): images (n, 1, side, side) standardised on the train
    set, labels 0..9. Fashion-MNIST average-pooled to side x side when it is installed
    (apt-get install dataset-fashion-mnist), else scikit-learn's 8 x 8 digits."""
    rng = np.random.default_rng(seed)
    if FASHION.is_dir():
        x, y, xt, yt = _fashion(side)
        tr, te = rng.permutation(len(x))[:n_train], rng.permutation(len(xt))[:n_test]
        x, y, xt, yt = x[tr], y[tr], xt[te], yt[te]
    else:
        from sklearn.datasets import load_digits

        images, labels = load_digits(return_X_y=True)
        order = rng.permutation(len(images))[: n_train + n_test]
        images = images[order].reshape(-1, 8, 8)
        x, y, xt, yt = images[:n_train], labels[order][:n_train], images[n_train:], labels[order][n_train:]
    mean, std = x.mean(), x.std()
    return (((x - mean) / std)[:, None], y.astype(np.int64), ((xt - mean) / std)[:, None], yt.astype(np.int64))
