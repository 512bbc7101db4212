"""Two runs side by side on one time axis: discrete training (gd, heavy-ball) beside the
flow, or any two runs of the same network and data.

At the save times of the first run (those within the second's horizon), with f the raw
training outputs and f0 the common initial ones:

    distance(t) = ||f_a(t) - f_b(t)|| / ||f_b(t) - f0||

the relative distance between the learned functions (the second run read at the first's
times: stored where it saved, replayed with its own method elsewhere), and the loss gap
L_a(t) - L_b(t). When a run stores its Hessian spectrum, its sharpness lambda_max(t) is
a column, and for a gd / heavy-ball run so is lr * lambda_max(t): gradient descent is
stable on a quadratic while this is below 2 (Cohen et al., "Gradient descent on neural
networks typically occurs at the edge of stability", ICLR 2021). A central flow adds its
predictions of gradient descent's time-averaged loss and oscillation variance
(``central_loss``, ``central_sigma2``; :mod:`gflow.central`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import DISCRETE
from .errors import GflowError
from .trajectory import Trajectory, open_trajectory


def compare(path_a: str | Path | Trajectory, path_b: str | Path | Trajectory, *,
            trust_code: bool = False) -> pd.DataFrame:
    """A table with columns t, distance, loss_a, loss_b, loss_gap, and where stored
    lambda_max_a / lambda_max_b, lr_lambda_max_a / lr_lambda_max_b, central_loss_a /
    central_loss_b and central_sigma2_a / central_sigma2_b (see the module
    docstring). The two runs must start from the same network and data. The second run's
    network is rebuilt (to replay between its saves): a run made with factory or loss
    references needs ``trust_code=True`` for that (see :func:`gflow.open`)."""
    a, b = (p if isinstance(p, Trajectory) else open_trajectory(p, trust_code=trust_code) for p in (path_a, path_b))
    for traj in (a, b):
        if not len(traj):
            raise GflowError(f"{traj.path}: no saves yet: nothing to compare")
    f0 = a.read("init/f0_train")
    if a.read("init/w0").shape != b.read("init/w0").shape or not np.array_equal(f0, b.read("init/f0_train")):
        raise GflowError(f"{a.path} and {b.path} do not start from the same network and data: "
                         "compare runs that differ only in how they are integrated")
    times = a.save_times
    times = times[(times > 0) & (times <= b.save_times[-1])]
    if not len(times):
        raise GflowError(f"{a.path} has no save time within {b.path}'s horizon (0, {b.save_times[-1]:g}]")
    rows_a = np.flatnonzero(np.isin(a.save_times, times))
    f_a = np.stack([a.outputs(int(i)) for i in rows_a])
    f_b = b.train_outputs_at(times)
    axes = tuple(range(1, f_a.ndim))
    distance = np.sqrt(((f_a - f_b) ** 2).sum(axis=axes) / ((f_b - f0) ** 2).sum(axis=axes))
    loss_a = a.read("saves/train_loss")[rows_a]
    flow_b = b.flow
    loss_b = np.array([flow_b.loss(torch.from_numpy(f).to(flow_b.w0), "train") for f in f_b])
    table = pd.DataFrame({"t": times, "distance": distance, "loss_a": loss_a, "loss_b": loss_b,
                          "loss_gap": loss_a - loss_b})
    for name, traj in (("a", a), ("b", b)):
        if traj.has("saves/hessian"):
            t_h, values = traj.hessian_spectrum()
            sharpness = np.interp(times, t_h, values[:, 0])
            table[f"lambda_max_{name}"] = sharpness
            if traj.config.solver in DISCRETE:
                table[f"lr_lambda_max_{name}"] = traj.config.lr * sharpness
        if traj.has("saves/central_loss"):  # a central flow's predictions of gradient descent's averages
            for column in ("central_loss", "central_sigma2"):
                table[f"{column}_{name}"] = np.interp(times, traj.save_times, traj.read(f"saves/{column}"))
    return table
