"""Shared for the store's tests: one small finished run, and copies of it to damage."""

import shutil

import pytest

import gflow
from gflow import RunConfig

CFG = RunConfig(ptr=40, pte=10, width=8, t_end=5.0, saves=5, solver="gradient-ratio")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return gflow.run(CFG, tmp_path_factory.mktemp("store") / "good.h5", progress=False).path


@pytest.fixture
def copy(good, tmp_path):
    """copy(name="x.h5"): a fresh copy of the good file to change."""

    def make(name="x.h5"):
        path = tmp_path / name
        shutil.copy(good, path)
        return path

    return make
