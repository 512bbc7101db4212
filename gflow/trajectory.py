"""A stored run with its model: the analysis that needs the network on top of the reader.

``gflow.open(path)`` returns a :class:`Trajectory`: everything stored reads without the
model (:class:`~gflow.store.TrajectoryFile`); what needs the network (states between saves,
exact replay, kernels of stored states, the linearization gap, curvature, t1) rebuilds it
once, on first use: from the config (gflow's own network and data, or the user's factory
references), or from the objects given to ``gflow.open(path, model=..., data=..., loss=...)``
when the run was made with Python objects. A model, data or loss that does not match what
the file recorded is refused (:func:`matching_flow`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from solvers import Observer, SaveRecord, hermite

from .errors import GflowError
from .flow import DataArg, GradientFlow, build
from .geometry import (
    Curvature,
    check_threshold,
    curvature,
    first_crossing,
    linearization_gap,
)
from .kernels import ntk, relative_change
from .losses import Loss
from .methods import integrate_flow
from .store import TrajectoryFile

if TYPE_CHECKING:
    import pandas as pd

_ARGUMENT = {"model": "model=...", "data": "data=(x_train, y_train, x_test, y_test)", "loss": "loss=..."}
_UNREBUILDABLE = {"model": ("object",), "data": ("arrays",), "loss": ("object",)}


def matching_flow(file: TrajectoryFile, model: nn.Module | None = None, data: DataArg | None = None,
                  loss: Loss | str | None = None, trust_code: bool = False) -> GradientFlow:
    """The run's ODE rebuilt for the stored file, checked against what the file recorded.

    Pieces the file cannot rebuild (a model, data or loss given as Python objects) must be
    passed in. The rebuilt problem must have the stored parameter names and shapes, the
    stored w0 bit for bit, the stored outputs f0 on the training set, the stored data
    digest and the stored initial loss; anything else is one GflowError saying what differs.
    Model, data and loss references in the file's config are code named by the file: they
    are imported only with ``trust_code`` (:func:`gflow.build`).
    """
    recorded = file.sources
    given = {"model": model, "data": data, "loss": loss}
    for what, source in recorded.items():
        if given[what] is None and source.get("source") in _UNREBUILDABLE[what]:
            name = source.get("class") or source.get("name") or ""
            raise GflowError(f"{file.path}: the run's {what} was a Python object{f' ({name})' if name else ''} that "
                             f"the file cannot rebuild; pass it: gflow.open(path, {_ARGUMENT[what]})")
    flow = build(file.config, model=model, data=data, loss=loss, file=file.path, trust_code=trust_code)
    _check_matches(file, flow, recorded)
    return flow


def _check_matches(file: TrajectoryFile, flow: GradientFlow, recorded: dict[str, dict]) -> None:
    where = f"does not match {file.path}"
    stored = recorded["model"].get("parameters")
    mine = flow.sources["model"]["parameters"]
    if stored and mine != stored:
        first = next((a, b) for a, b in zip([*mine, None], [*stored, None]) if a != b)
        raise GflowError(f"model {where}: parameter {first[0]} where the file has {first[1]}")
    w0 = file.read("init/w0")
    if w0.shape != tuple(flow.w0.shape) or not np.array_equal(w0, flow.w0.cpu().numpy()):
        raise GflowError(f"model {where}: its initial parameters w0 differ from the stored ones "
                         f"({flow.n_params} parameters here, {w0.size} stored): another initialisation or architecture")
    digest = file.read_attr("data", "digest")
    if digest is not None and digest != flow.data.digest():
        raise GflowError(f"data {where}: the inputs and labels differ from the ones the run used (SHA-256 digest)")
    tolerance = 1e-9 if flow.w0.dtype == torch.float64 else 1e-4
    f0 = file.read("init/f0_train")
    here = flow.f0_train.cpu().numpy()
    scale = max(float(np.abs(f0).max(initial=0.0)), 1e-300)
    if f0.shape != here.shape or float(np.abs(f0 - here).max(initial=0.0)) > tolerance * scale:
        raise GflowError(f"model {where}: at the stored w0 its outputs differ from the stored f0: another function")
    if len(file):
        stored_loss = float(file.read("saves/train_loss")[0])
        loss0 = flow.loss(torch.from_numpy(f0).to(flow.w0), "train") + float(flow.penalty(flow.w0))
        if not abs(loss0 - stored_loss) <= tolerance * max(abs(stored_loss), 1e-300):
            raise GflowError(f"loss {where}: it gives L(w0) = {loss0:.10g} where the run stored {stored_loss:.10g}")


class _Collect(Observer):
    """Keeps the state at every save time of an integration."""

    def __init__(self) -> None:
        self.states: dict[float, torch.Tensor] = {}

    def on_save(self, record: SaveRecord) -> None:
        self.states[record.t] = record.y


@dataclass(frozen=True)
class Point:
    """A trajectory at time t: the ODE state and the raw outputs on train and test."""

    t: float
    state: torch.Tensor
    f_train: np.ndarray
    f_test: np.ndarray


class Trajectory(TrajectoryFile):
    """A stored run (see :class:`~gflow.store.TrajectoryFile` for what reads without the
    model) and the analysis that needs its network, rebuilt once on first use."""

    def __init__(self, path: str | Path, *, model: nn.Module | None = None, data: DataArg | None = None,
                 loss: Loss | str | None = None, trust_code: bool = False) -> None:
        super().__init__(path)
        self._given = {"model": model, "data": data, "loss": loss, "trust_code": trust_code}
        self._flow: GradientFlow | None = None

    @property
    def flow(self) -> GradientFlow:
        """The run's ODE (data, model, loss), rebuilt and checked against the file, once."""
        if self._flow is None:
            self._flow = matching_flow(self, **self._given)
        return self._flow

    def at(self, t: float, exact: bool = False) -> Point:
        """The state and outputs at any time t within the stored run.

        Between two saves that store their states and derivatives (``save_derivatives``):
        cubic Hermite interpolation (fourth order in the save spacing, no evaluation), unless
        ``exact``. Otherwise, or with ``exact=True``, the integration is replayed from the
        nearest stored state at or before t with the run's own method and step size, up to t:
        deterministic; bit for bit the run's own steps for the methods that land on save times
        (gradient-ratio, momentum), the run to its tolerance for interpolating ones (whose
        stored states are interpolated, not step ends).
        """
        times = self.save_times
        if not times[0] <= t <= times[-1]:
            raise ValueError(f"t = {t:g} lies outside the stored run [{times[0]:g}, {times[-1]:g}]")
        i = int(np.searchsorted(times, t, side="right")) - 1
        stored = set(self.stored_states.tolist())
        if times[i] == t and i in stored:
            state = self.state(i)
        elif not exact and i in stored and i + 1 in stored and self.has("saves/dstate"):
            state = hermite(t, float(times[i]), self.state(i), self.derivative(i),
                            float(times[i + 1]), self.state(i + 1), self.derivative(i + 1))
        else:
            state = self._replay([t])[0]
        flow = self.flow
        w = flow.weights(state.to(flow.w0))
        return Point(t, state, flow.outputs(w, flow.x_train).cpu().numpy(), flow.outputs(w, flow.x_test).cpu().numpy())

    def train_outputs_at(self, times: Sequence[float]) -> np.ndarray:
        """Raw outputs f(w(t), x_train) at increasing ``times`` within the run: the stored
        outputs at save times, the rest from states replayed with the run's own method
        (batched: one integration per stored state that starts any)."""
        saved = self.save_times
        index = {float(t): i for i, t in enumerate(saved)}
        missing = [float(t) for t in times if float(t) not in index]
        flow = self.flow
        replayed = dict(zip(missing, self._replay(missing))) if missing else {}
        return np.stack([self.outputs(index[float(t)]) if float(t) in index else
                         flow.outputs(flow.weights(replayed[float(t)].to(flow.w0)), flow.x_train).cpu().numpy()
                         for t in times])

    def _replay(self, times: list[float]) -> list[torch.Tensor]:
        """The states at ``times`` (increasing, within the run), each replayed from the latest
        stored state at or before it: one integration per stored state that starts any, to
        the last time it serves."""
        saved, stored = self.save_times, self.stored_states
        steps = self.read("saves/dt")
        flow = self.flow
        out: dict[float, torch.Tensor] = {}
        latest = np.searchsorted(saved[stored], times, side="right") - 1
        if len(times) and latest[0] < 0:  # the first save always stores its state: a damaged file
            raise GflowError(f"{self.path}: no state stored at or before t = {times[0]:g} to replay from "
                             "(saves/has_state marks none there; the first save always holds one)")
        starts = stored[latest]
        for k in np.unique(starts):
            targets = [t for t, s in zip(times, starts) if s == k]
            t0 = float(saved[k])
            start = self.state(int(k)).to(flow.w0)
            out.update({t: start for t in targets if t == t0})
            later = [t for t in targets if t > t0]
            if later:
                collect = _Collect()
                dt = float(steps[k])
                integrate_flow(flow, start, (t0, later[-1]), save_at=later, observers=[collect],
                               dt=None if np.isnan(dt) else dt)
                out.update(collect.states)
        return [out[t] for t in times]

    def weights(self, i: int) -> torch.Tensor:
        """The network parameters w at the i-th save (the first half of a momentum state):
        stored, or replayed from the latest stored state before it."""
        return self.weights_at([i])[0]

    def weights_at(self, indices: list[int]) -> list[torch.Tensor]:
        """w at several saves, replaying once per stored state for those that store none. A
        stored one reads without the network, on the CPU until the network is rebuilt, then
        on its device."""
        n = len(self)
        indices = [i % n for i in indices]
        stored = set(self.stored_states.tolist())
        missing = sorted({i for i in indices if i not in stored})
        replayed = dict(zip(missing, self._replay([float(self.save_times[i]) for i in missing]))) if missing else {}
        out = [super(Trajectory, self).weights(i) if i in stored else self.flow.weights(replayed[i]) for i in indices]
        return [w.to(self._flow.w0) for w in out] if self._flow is not None else out

    def representation_change(self, n: int = 100) -> pd.DataFrame:
        """How the hidden representations move: at every save, for every hidden layer l,
        ||Z_l(t) - Z_l(0)||_F / ||Z_l(0)||_F with Z_l the layer's pre-activations on the first
        n train points (see :meth:`FlatModel.hidden`). Columns: t, then one per layer. Read
        from the file when the run stored it (runs with kernel_n = n > 0 do, on the kernel
        subset); otherwise computed now, replaying saves without a stored state."""
        import pandas as pd

        if self.has("saves/representation_change") and n == self.config.kernel_n:  # stored during the run
            with self._file() as f:
                layers = json.loads(f["saves/representation_change"].attrs["layers"])
            values = self.read("saves/representation_change")
            return pd.DataFrame({"t": self.save_times, **{name: values[:, i] for i, name in enumerate(layers)}})
        flow = self.flow
        x = flow.x_train[:n]
        if not hasattr(flow.model, "hidden"):
            raise GflowError("representation change needs the network's hidden layers: not for a linearized run")
        first = flow.model.hidden(flow.w0, x)
        if not first:
            raise GflowError(f"{self.path}: the model has no hidden layers gflow can read (submodules holding "
                             "parameters, such as nn.Linear or nn.Conv2d)")
        rows = []
        for t, w in zip(self.save_times, self.weights_at(list(range(len(self))))):
            now = flow.model.hidden(w, x)
            rows.append({"t": float(t)} | {name: float((now[name] - z0).norm() / z0.norm()) for name, z0 in first.items()})
        return pd.DataFrame(rows)

    def kernel(self, i: int, n: int = 100) -> torch.Tensor:
        """Theta(w(t_i)) on the first n train points, computed from the stored state (for k
        outputs, the trace or full kernel as the run's ``kernel_outputs`` says)."""
        flow, cfg = self.flow, self.config
        return ntk(flow.model, self.weights(i), flow.x_train[:n], max_memory=cfg.kernel_memory_mb * 2**20,
                   outputs=cfg.kernel_outputs)

    def kernel_change(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(times, ||Theta(t) - Theta(0)||_F / ||Theta(0)||_F) on the first n train points: read
        from the snapshots taken during the run when they are on n points (``n`` = None: the
        run's snapshots when it took any, else 100 points); otherwise computed now at every
        save."""
        stored_n = int(self.read_attr("kernel", "n")) if self.has("kernel") else None
        if stored_n is not None and n in (None, stored_n):
            return self.stored_kernel_change()
        n = 100 if n is None else n
        flow, cfg = self.flow, self.config
        kernels = [ntk(flow.model, w, flow.x_train[:n], max_memory=cfg.kernel_memory_mb * 2**20,
                       outputs=cfg.kernel_outputs) for w in self.weights_at(list(range(len(self))))]
        return self.save_times, np.array([relative_change(theta, kernels[0]) for theta in kernels])

    def linearization_gap(self) -> tuple[np.ndarray, np.ndarray]:
        """(times, ||f(w(t)) - f0 - J0 (w(t) - w0)|| / ||f(w(t)) - f0||) on the train set
        (Frobenius norms over samples and outputs), at every save."""
        flow = self.flow
        weights = self.weights_at(list(range(len(self))))
        return self.save_times, np.array([linearization_gap(flow.model, flow.w0, w, flow.x_train) for w in weights])

    def curvature(self, i: int = 0) -> Curvature:
        """Curvature of the network manifold along the direction of motion u = dw/dt at the
        i-th save, on the train set: radius R = ||J u||^2 / ||u^T d2f u||, exit time R / ||J u||."""
        flow, n = self.flow, len(self)
        i %= n
        stored = i in set(self.stored_states.tolist())
        state = self.state(i).to(flow.w0) if stored else self._replay([float(self.save_times[i])])[0].to(flow.w0)
        u = flow.weights(flow.vector_field(float(self.save_times[i]), state))
        if float(u.norm()) == 0.0 and flow.momentum:  # momentum starts at rest: use the force
            u = -flow.loss_and_grad(flow.weights(state))[1]
        return curvature(flow.model, flow.weights(state), u, flow.x_train)

    def t1(self, method: str = "linearization", eps: float = 0.1) -> float:
        """The time training leaves the tangent space; inf when the run ends first (lazy).

        linearization: first t with linearization gap > eps;  kernel: first t with
        ||Theta(t) - Theta(0)|| / ||Theta(0)|| > eps;  curvature: the prediction
        R / ||J u|| at t = 0 (eps unused).
        """
        check_threshold(eps)
        if method == "curvature":
            return self.curvature(0).exit_time
        if method == "linearization":
            return first_crossing(*self.linearization_gap(), eps)
        if method == "kernel":
            return first_crossing(*self.kernel_change(), eps)
        raise ValueError(f"method = {method!r}: must be linearization, kernel or curvature")


def open_trajectory(path: str | Path, *, model: nn.Module | None = None, data: DataArg | None = None,
                    loss: Loss | str | None = None, trust_code: bool = False) -> Trajectory:
    """Open a stored run for queries (``gflow.open``). ``model``, ``data``, ``loss``: the
    Python objects the run was made with, for analysis that needs the network when the
    file cannot rebuild it (runs made from objects rather than config references).

    Everything stored reads without running any code. An analysis that needs the network
    of a run made with a model factory, data loader or loss reference imports and calls
    that code only with ``trust_code=True``: a file from someone else can name any
    importable function (``os:system``); without the opt-in the analysis ends with one
    UntrustedCode error naming the reference. Built-in networks and data need no opt-in."""
    return Trajectory(path, model=model, data=data, loss=loss, trust_code=trust_code)
