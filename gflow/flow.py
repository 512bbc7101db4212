"""The training ODE of one run: gradient flow or momentum flow of the paper's loss.

    gradient flow   dw/dt = -grad L(w)
    momentum flow   dv/dt = -(v + grad L(w)) / tau,   dw/dt = v     (state y = (w, v))

with L(w) = 1/(alpha^2 n) sum_mu l(alpha (f(w, x_mu) - f(w0, x_mu)), y_mu) (seed 001), plus
lambda/2 |w - c|^2 with ``weight_decay`` = lambda > 0 (c = 0, or w0 with
``weight_decay_center = "init"``).

The network, the data and the loss come from the config (built-in, or the user's factory
references) or from the caller as Python objects: :func:`build`.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from solvers import Evaluation

from .batching import Batch
from .compilation import decide
from .config import RunConfig
from .data import Dataset, from_arrays, from_loader, load, with_labels_for
from .errors import ConfigError, GflowError, one_line
from .limits import check_fits
from .losses import Loss, check_task, classification_error, get_loss
from .models import FlatModel, Linearized, apply_batchnorm_policy, build_model, prepare
from .references import call, check_trusted, qualified_name, resolve


@functools.cache
def _note_compiling() -> None:
    """Say once per process why the run pauses before its first step."""
    print("gflow: note: compiling the loss and gradient (a forward pass this large pays for it: "
          "gflow.compilation; compile = false, --no-compile, turns it off)", file=sys.stderr)


class GradientFlow:
    """A :class:`solvers.Problem`: ``evaluate(t, y)`` is one full-batch forward+backward.

    Attributes a user can rely on: ``y0`` (flat initial state), ``vector_field(t, y)``,
    ``model(w, x)`` (raw outputs f, shape (n,) or (n, k)), ``x_train, y_train, x_test,
    y_test``, ``w0``, ``f0_train, f0_test``, ``n_params``, ``outputs_k`` (k, 1 for a scalar
    output), ``momentum``, ``grad_key`` (the evaluation value holding grad L up to sign),
    ``sources`` (what the trajectory file records of where the
    model, data and loss came from). With ``cfg.linearized`` the model is the network's
    linearisation at w0 (same data, loss and initialisation).
    """

    def __init__(self, cfg: RunConfig, model: FlatModel | Linearized, data: Dataset, loss_fn: Loss,
                 sources: dict[str, dict[str, Any]] | None = None) -> None:
        self.cfg = cfg
        self.model = model
        self.alpha = cfg.alpha
        self.loss_fn = loss_fn
        self.momentum = cfg.momentum
        self.n_params = model.n_params
        self.w0 = model.w0
        self.f0_train = self.outputs(self.w0, data.x_train)
        if self.f0_train.dim() not in (1, 2) or len(self.f0_train) != len(data.x_train):
            raise ConfigError("model", sources["model"].get("class") if sources else cfg.arch,
                              f"must map a batch of n inputs to outputs of shape (n,) or (n, k); on the "
                              f"{len(data.x_train)} training inputs it gave shape {tuple(self.f0_train.shape)}")
        self.outputs_k = 1 if self.f0_train.dim() == 1 else self.f0_train.shape[1]
        self.data = data = with_labels_for(data, self.outputs_k, self.w0.dtype)
        self.x_train, self.y_train = data.x_train, data.y_train
        self.x_test, self.y_test = data.x_test, data.y_test
        self.f0_test = self.outputs(self.w0, self.x_test)
        self.sources = sources or {}
        self.y0 = torch.cat([self.w0, torch.zeros_like(self.w0)]) if self.momentum else self.w0.clone()
        # cfg.compile, or the rule of gflow.compilation when unset (decided from the config alone)
        self.compiles = decide(cfg.compile, lambda x: self.model(self.w0, x), self.x_train)
        if self.compiles and cfg.compile is None:
            _note_compiling()
        self._compiled: object = None  # the compiled evaluation: built on first use, False if it failed
        self.batch: Batch | None = None  # the ensemble batch evaluating this member (gflow.batching.joined)
        self.decay = cfg.weight_decay
        self.decay_center = self.w0 if cfg.weight_decay_center == "init" else torch.zeros_like(self.w0)

    def penalty(self, w: torch.Tensor) -> torch.Tensor:
        """The weight decay's share of L: lambda/2 |w - c|^2 (zero without weight decay);
        differentiable in w."""
        if not self.decay:
            return w.new_zeros(())
        return 0.5 * self.decay * (w - self.decay_center).pow(2).sum()

    def _chunks(self, n: int) -> list[slice]:
        size = self.cfg.chunk or max(n, 1)
        return [slice(i, i + size) for i in range(0, n, size)]

    def weights(self, y: torch.Tensor) -> torch.Tensor:
        return y[: self.n_params]

    def outputs(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """f(w, x), raw, evaluated in chunks without building a graph."""
        with torch.no_grad():
            parts = [self.model(w, x[s]) for s in self._chunks(len(x))]
        if parts:
            return torch.cat(parts)
        k = getattr(self, "outputs_k", 1)
        return w.new_zeros((0,) if k == 1 else (0, k))

    def scaled(self, f: torch.Tensor, split: str) -> torch.Tensor:
        """The learned function a = alpha (f - f0) (or alpha f when centring is off)."""
        f0 = self.f0_train if split == "train" else self.f0_test
        return self.alpha * (f - f0) if self.cfg.centered else self.alpha * f

    def loss(self, f: torch.Tensor, split: str) -> float:
        """L = mean_mu l(alpha (f - f0), y) / alpha^2 on a split, from its outputs."""
        y = self.y_train if split == "train" else self.y_test
        if len(y) == 0:
            return float("nan")
        return float(self.loss_fn(self.scaled(f, split), y).mean()) / self.alpha**2

    def error(self, f: torch.Tensor, split: str) -> float:
        """Classification error of alpha (f - f0) (see :func:`gflow.losses.classification_error`)."""
        y = self.y_train if split == "train" else self.y_test
        return classification_error(self.scaled(f, split), y)

    def loss_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(L(w), grad L(w), f(w, x_train)) with one forward+backward per chunk (for a member
        of a batched ensemble, its share of one vectorised call: :mod:`gflow.batching`)."""
        loss, grad, f = self.data_term(w) if self.batch is None else self.batch.evaluate(self, w)
        if self.decay:
            loss, grad = loss + self.penalty(w.detach()), grad + self.decay * (w.detach() - self.decay_center)
        return loss, grad, f

    def data_term(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The data term of L (no weight decay), its gradient and f(w, x_train): compiled
        (``compiles``) or eager, chunk by chunk."""
        if self.compiles and self._compiled is not False:
            result = self._compiled_data_term(w)
            if result is not None:
                return result
        # Leaves per parameter tensor, gradients concatenated: ~2% faster (measured in
        # alternation) than differentiating through the split of one flat leaf.
        parts = [p.detach().requires_grad_(True) for p in self.model.parts(w)]
        losses, grads, outs = [], [], []
        with torch.enable_grad():  # callers such as SciPy's wrapper evaluate under no_grad
            for s in self._chunks(len(self.x_train)):
                chunk_loss, f = self._chunk_loss(parts, s)
                grads.append(_flat(torch.autograd.grad(chunk_loss, parts)))
                losses.append(chunk_loss.detach())
                outs.append(f.detach())
        return _summed(losses, grads, outs)

    def _compiled_data_term(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The data term's value, gradient and outputs through one compiled function per
        chunk size (``torch.func.grad_and_value`` of the chunk's loss under torch.compile,
        static shapes). None, after a one-line note on stderr, when the model does not
        compile: eager evaluation from then on."""
        if self._compiled is None:
            def chunk(parts: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, f0: torch.Tensor, n: int):
                f = self.model.apply(parts, x)
                a = self.alpha * (f - f0) if self.cfg.centered else self.alpha * f
                return self.loss_fn(a, y).sum() / (self.alpha**2 * n), f

            self._compiled = torch.compile(torch.func.grad_and_value(chunk, has_aux=True), dynamic=False)
        parts = [p.detach() for p in self.model.parts(w)]
        losses, grads, outs = [], [], []
        try:
            for s in self._chunks(len(self.x_train)):
                g, (loss, f) = self._compiled(parts, self.x_train[s], self.y_train[s], self.f0_train[s],
                                              len(self.x_train))
                grads.append(_flat(tuple(g)))
                losses.append(loss.detach())
                outs.append(f.detach())
        except Exception as e:  # torch._dynamo's and inductor's errors have no common public base
            self._compiled = False
            print(f"gflow: note: the model did not compile ({one_line(e)}); evaluating eagerly",
                  file=sys.stderr)
            return None
        return _summed(losses, grads, outs)

    def _chunk_loss(self, parts: list[torch.Tensor], s: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """The training points in ``s``'s share of L (their losses summed over alpha^2 n),
        and their raw outputs: differentiable in ``parts``."""
        f = self.model.apply(parts, self.x_train[s])
        a = self.alpha * (f - self.f0_train[s]) if self.cfg.centered else self.alpha * f
        return self.loss_fn(a, self.y_train[s]).sum() / (self.alpha**2 * len(self.x_train)), f

    def training_loss(self, w: torch.Tensor) -> torch.Tensor:
        """L(w) on the training set as a differentiable function of the flat weights, for
        torch.func transforms (Hessian-vector products: :mod:`gflow.hessian`)."""
        parts = self.model.parts(w)
        return sum(self._chunk_loss(parts, s)[0] for s in self._chunks(len(self.x_train))) + self.penalty(w)

    def evaluate(self, t: float, y: torch.Tensor) -> Evaluation:
        loss, grad, f = self.loss_and_grad(self.weights(y))
        if self.momentum:
            v = y[self.n_params :]
            dydt = torch.cat([v, -(v + grad) / self.cfg.time_constant])
            return Evaluation(t=t, y=y, dydt=dydt, aux={"loss": loss, "grad": grad, "f": f})
        # grad L = -dy/dt: negated in place and not held twice (at a million parameters, 8 MB
        # per evaluation alive); its readers name it by ``grad_key``.
        return Evaluation(t=t, y=y, dydt=grad.neg_(), aux={"loss": loss, "f": f})

    @property
    def grad_key(self) -> str:
        """The evaluation value (:meth:`solvers.problem.Evaluation.value`) from which ||grad L||
        and the gradient turn are read: ``"dydt"`` for gradient flow (grad L = -dy/dt, the
        same norm and turn), ``"grad"`` where the gradient is held apart (momentum flow, the
        modified and central flows)."""
        return "grad" if self.momentum else "dydt"

    def gradient_norm(self, y: torch.Tensor, dydt: torch.Tensor) -> float:
        """||grad L|| read off a state's derivative (no evaluation): ||dw/dt|| for gradient
        flow; for momentum flow, g = -(tau dv/dt + v)."""
        if not self.momentum:
            return float(dydt.norm())
        n = self.n_params
        return float((self.cfg.time_constant * dydt[n:] + y[n:]).norm())

    def vector_field(self, t: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """dy/dt at (t, y): what an external ODE solver integrates."""
        return self.evaluate(float(t), y).dydt


def _summed(losses: list[torch.Tensor], grads: list[torch.Tensor],
            outs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chunks' losses and gradients summed, their outputs concatenated."""
    if len(grads) == 1:
        return losses[0], grads[0], outs[0]
    return torch.stack(losses).sum(), torch.stack(grads).sum(0), torch.cat(outs)


def _flat(tensors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return tensors[0].reshape(-1) if len(tensors) == 1 else torch.cat([t.reshape(-1) for t in tensors])


DataArg = Any  # (x_train, y_train[, x_test, y_test]) as tensors or arrays


def _data(cfg: RunConfig, data: DataArg | None, dtype: torch.dtype, device: torch.device,
          gate: dict[str, Any]) -> tuple[Dataset, dict]:
    if data is not None:
        return from_arrays(*from_loader(data, "data argument"), dtype=dtype, device=device), {"source": "arrays"}
    if cfg.data is not None:
        with default_dtype(dtype):
            returned = call("data", cfg.data, cfg.data_args, **gate)
        arrays = from_arrays(*from_loader(returned, cfg.data), dtype=dtype, device=device)
        return arrays, {"source": "loader", "reference": cfg.data, "args": cfg.data_args}
    return load(cfg, dtype=dtype, device=device), {"source": "builtin", "dataset": cfg.dataset}


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """torch's default dtype set to ``dtype`` inside (user factories create tensors with it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _model(cfg: RunConfig, model: nn.Module | None, data: Dataset, dtype: torch.dtype,
           device: torch.device, gate: dict[str, Any]) -> tuple[FlatModel, dict]:
    if model is not None:
        return prepare(model, dtype, device), {"source": "object"}
    if cfg.model is not None:
        # The public contract: torch's global generator is seeded with ``seed`` (so seed varies
        # the initialisation) and its default dtype is the run's (so the same factory gives the
        # same w0 in any process, whatever default the caller had set).
        torch.manual_seed(cfg.seed)
        with default_dtype(dtype):
            module = call("model", cfg.model, cfg.model_args, **gate)
        return prepare(module, dtype, device, cfg.model), {"source": "factory", "reference": cfg.model,
                                                           "args": cfg.model_args}
    if data.x_train.dim() != 2:
        raise GflowError(f"arch = {cfg.arch!r}: the built-in networks take flat inputs (n, d), but the data's inputs "
                         f"have shape {tuple(data.x_train.shape)}: flatten them or give your own model")
    built = build_model(data.x_train.shape[1], cfg.arch, cfg.depth, cfg.width, cfg.act, cfg.parametrization,
                        cfg.kappa, cfg.seed, dtype, device, outputs=data.classes)
    return built, {"source": "builtin", "arch": cfg.arch}


def _loss(cfg: RunConfig, loss: Loss | str | None, gate: dict[str, Any]) -> tuple[Loss, dict]:
    if loss is None:
        loss = cfg.loss
    if isinstance(loss, str):
        if ":" in loss:
            return resolve("loss", loss, **gate), {"source": "reference", "reference": loss, "name": loss}
        return get_loss(loss, cfg.beta), {"source": "builtin", "name": loss}
    if not callable(loss):
        raise ConfigError("loss", loss, "must be a loss name or a callable loss(a, y) -> per-sample losses")
    return loss, {"source": "object", "name": qualified_name(loss)}


def _check_loss(flow: GradientFlow, name: str | None) -> None:
    """The labels suit the loss and the network's outputs, and the loss gives one value per
    sample (checked once, on the first two training points, before anything is written)."""
    for y, split in ((flow.y_train, "train"), (flow.y_test, "test")):
        check_task(name, flow.outputs_k, y, split)
    a = flow.scaled(flow.f0_train, "train")[:2]
    try:
        values = flow.loss_fn(a, flow.y_train[:2])
    except Exception as e:
        raise ConfigError("loss", name or flow.sources["loss"]["name"], f"failed on the model's outputs of shape "
                          f"{tuple(a.shape)} and labels of shape {tuple(flow.y_train[:2].shape)} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(values, torch.Tensor) or values.shape != (len(a),):
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise ConfigError("loss", name or flow.sources["loss"]["name"],
                          f"must return one loss per sample, shape ({len(a)},), got {shape}")


def _flow_class(cfg: RunConfig) -> type[GradientFlow]:
    """GradientFlow, or for ``flow = "central" | "modified"`` the flow of gradient descent
    (gflow.central builds on this module, hence the import here)."""
    from .central import CentralFlow, ModifiedFlow

    return {"central": CentralFlow, "modified": ModifiedFlow}.get(cfg.flow or "gradient", GradientFlow)


def available_device(name: str) -> torch.device:
    """The torch device ``name`` (cpu, cuda, cuda:N), or a ConfigError saying why this
    machine has none such."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "CUDA is not available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError("device", name, f"this machine has {torch.cuda.device_count()} GPU(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def build(cfg: RunConfig, *, model: nn.Module | None = None, data: DataArg | None = None,
          loss: Loss | str | None = None, file: str | os.PathLike[str] | None = None,
          trust_code: bool = False) -> GradientFlow:
    """The gradient-flow problem of a run: data, network at initialisation, loss (for
    ``flow = "central"`` or ``"modified"``, the flow of gradient descent at ``lr``:
    :mod:`gflow.central`).

    Each of the three comes, in this order of precedence, from the argument (a
    ``torch.nn.Module``; a tuple ``(x_train, y_train, x_test, y_test)`` or
    ``(x_train, y_train)`` of tensors or arrays; a loss name or a callable
    ``loss(a, y) -> per-sample losses`` on a = alpha (f - f0)), from the config's reference
    (``model``/``data``/``loss`` = "package.module:function" with ``*_args``), or from the
    built-in fields. A module is copied, never changed; it runs in eval mode.

    ``file``: the trajectory file ``cfg`` was read from. Its model, data and loss
    references are then code named by a file, imported and called only with
    ``trust_code=True`` (:mod:`gflow.references`); otherwise one UntrustedCode error names
    the first of them, before any of the three is built. A config of your own (``file``
    None) needs no opt-in, nor do built-in networks, data and losses.
    """
    dtype = getattr(torch, cfg.dtype)
    device = available_device(cfg.device)
    gate = {"file": file, "trust_code": trust_code}
    named = [(field, getattr(cfg, field), getattr(cfg, f"{field}_args", None))
             for field, given in (("model", model), ("data", data), ("loss", loss))
             if given is None and getattr(cfg, field) is not None and ":" in getattr(cfg, field)]
    check_trusted(named, file, trust_code)  # every reference named at once, before anything is built
    check_fits(cfg, data=data is None, network=model is None)  # gflow's own data and network, before allocation
    dataset, data_source = _data(cfg, data, dtype, device, gate)
    flat, model_source = _model(cfg, model, dataset, dtype, device, gate)
    batchnorm = apply_batchnorm_policy(flat, cfg.batchnorm, dataset.x_train, cfg.chunk)
    if batchnorm:
        model_source["batchnorm"] = batchnorm
    loss_fn, loss_source = _loss(cfg, loss, gate)
    net: FlatModel | Linearized = Linearized(flat, flat.w0) if cfg.linearized else flat
    if cfg.kernel_n > len(dataset.x_train):
        raise ConfigError("kernel_n", cfg.kernel_n, f"must be <= the {len(dataset.x_train)} training points")
    sources = {"model": {**model_source, **net.describe()}, "data": data_source, "loss": loss_source}
    try:
        flow = _flow_class(cfg)(cfg, net, dataset, loss_fn, sources)
    except RuntimeError as e:  # the module rejected the inputs (shapes, dtypes)
        raise ConfigError("model", sources["model"]["class"], f"cannot be applied to the inputs of shape "
                          f"{tuple(dataset.x_train.shape)} ({str(e).splitlines()[0]})") from None
    _check_loss(flow, loss_source["name"] if loss_source["source"] == "builtin" else None)
    return flow
