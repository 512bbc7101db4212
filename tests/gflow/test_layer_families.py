"""Every analysis on one model per standard layer family (tuple outputs, fused kernels
without forward-mode rules, normalisation, dropout, residual connections)."""

import math

import numpy as np
import pytest

import gflow
from gflow.autodiff import FORWARD, REVERSE
from tests.gflow.layers import FAMILIES

# fused attention kernels have no forward-mode rule: their products go reverse over reverse
MODE = {"attention": REVERSE, "transformer": REVERSE}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_flow_with_kernels_hessian_and_every_t1(tmp_path, family):
    cfg = gflow.RunConfig(model=f"tests.gflow.layers:{family}", ptr=30, pte=10, t_end=10.0, saves=6,
                          kernel_n=8, kernel_every=2, hessian_k=2)
    path = tmp_path / f"{family}.h5"
    gflow.run(cfg, path, progress=False)
    traj = gflow.open(path, trust_code=True)
    assert traj.status == "finished"
    times, change = traj.kernel_change()
    assert len(times) >= 3 and change[0] == 0 and np.all(np.isfinite(change)) and change[-1] > 0
    _, values = traj.hessian_spectrum()
    assert values.shape == (len(traj), 2) and np.all(np.isfinite(values))
    layers = traj.representation_change(n=8)
    assert len(layers.columns) >= 2 and np.all(layers.iloc[0, 1:] == 0)
    t_gap, gap = traj.linearization_gap()
    assert gap[0] == 0 and np.all(np.isfinite(gap))
    for method in ("linearization", "kernel", "curvature"):
        t1 = traj.t1(method, eps=0.01)
        assert t1 > 0 and not math.isnan(t1), method
    assert traj.flow.model.jvp.mode == MODE.get(family, FORWARD)
