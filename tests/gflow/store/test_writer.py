"""The writer (gflow.store.writer): what it streams into the file."""

import gflow

from .conftest import CFG


def test_the_step_table_records_the_ratio_the_controller_measured(tmp_path):
    """Accepted steps have every ratio at most 1; a ratio the controller does not measure is NaN."""
    cheb = gflow.run(CFG.replace(solver="chebyshev", rtol=1e-4, atol=1e-7), tmp_path / "c.h5", progress=False).steps
    paper = gflow.run(CFG, tmp_path / "p.h5", progress=False).steps
    assert (cheb["error_ratio"] <= 1).all() and (cheb["error_ratio"] > 0).any()
    assert cheb["dgrad_ratio"].isna().all()
    assert paper["error_ratio"].isna().all() and (paper["dgrad_ratio"] < 1).all()

