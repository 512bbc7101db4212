"""Shared by the domain's tests."""

import pytest
import torch


@pytest.fixture
def uncompilable(monkeypatch):
    """torch.compile whose compiled functions raise, as for a model the compiler cannot trace."""

    def refuse(fn, **kwargs):
        def broken(*args, **kw):
            raise RuntimeError("Unsupported: a construct the compiler cannot trace\nmore detail")
        return broken

    monkeypatch.setattr(torch, "compile", refuse)
