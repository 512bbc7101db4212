"""Members of an ensemble integrated together: each its own integration, their evaluations one call.

An ensemble's members are the same ODE from different initialisations. Each member is
integrated by its own thread with its own method (step size, error control, Krylov space,
stop events, writer), exactly the code of a single run, so a member never takes a step it
would not take alone. Only the evaluation is shared: a member that needs L(w) and grad L(w)
posts w and waits; when every live member is waiting, one of them evaluates all the posted
states at once,

    (L_i, grad L_i, f_i) = vmap(grad_and_value(l))(w_1, ..., w_B)      (B <= K live members)

with ``torch.func.vmap`` over the network's functional form (the parameter tensors, and any
buffers, stacked along a leading member axis), and hands each member its own values. A
member that finishes, fails or stops leaves, and the batch shrinks: the next round
evaluates those left. This is torchode's idea of a batch of independent problems (each
with its own step size and acceptance), with the bookkeeping per member on the host and
the arithmetic in one call; on a GPU the one call is what fills the device.

A member whose model or data does not match the batch's (another architecture, a data
loader that differs by seed), or a model that vmap cannot batch, is evaluated on its own
in the round (the second case after one note on stderr): the results are the same, only
not vectorised.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch.func import functional_call, grad_and_value, vmap

from .errors import one_line

if TYPE_CHECKING:
    from .flow import GradientFlow

_local = threading.local()


class Batch:
    """The meeting point of ``size`` member threads (see the module's docstring).

    A thread calls :meth:`serving` with its member's slot (0 <= slot < size) around its
    whole member (which may end before it integrates: a finished member kept, a config that
    fails to build); the member's flow takes part in rounds between :func:`joined`'s entry
    and exit. A round is evaluated when every joined flow has posted a state and no thread
    is still on its way to join, so the first rounds wait for every member to be built.

    The vectorised call always has ``size`` rows, each member in its own slot, and a slot
    whose member is not in the round (finished, failed, stopped, or evaluated on its own)
    evaluates the first member's initial weights, discarded. A member's values then do not
    depend on which others are still running: torch's vectorised kernels round an entry
    differently by its place in the batch (the odd tail of an SLEEF exp, a GEMM's edge), so
    a batch that shrank would give a member other bits than the same member in a full one,
    and a resumed ensemble, whose members restart at their own checkpoints, would not repeat
    the uninterrupted one. With static shapes it does, bitwise, as a single run's resume
    does. The price is the finished members' rows of the last rounds (the members of an
    ensemble need similar numbers of evaluations: 100-160 on the digits runs of the tests).
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._cv = threading.Condition()
        self._expected = size  # threads that have neither joined nor ended
        self._live: list[GradientFlow] = []
        self._slots: dict[int, int] = {}  # id(flow) -> its slot
        self._together: set[int] = set()  # id(flow) of the members the vectorised call evaluates
        self._posted: dict[int, torch.Tensor] = {}
        self._results: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | BaseException] = {}
        self._template: GradientFlow | None = None
        self._batched: object = None  # the vmapped evaluation: built on first use, False where vmap failed
        self._constants: dict[tuple[int, ...], tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

    @contextmanager
    def serving(self, slot: int) -> Iterator[None]:
        """The calling thread is the member in ``slot`` while inside. It holds the batch's
        lock throughout, except while it waits for a round: the members' host-side work
        runs one thread at a time, as the GIL would have it anyway, but without the threads
        contending for the GIL and for torch's intra-op threads (which made 8 members at
        width 10 1.7x slower than 8 runs in a row)."""
        if not 0 <= slot < self.size:
            raise ValueError(f"slot {slot} outside the batch's 0..{self.size - 1}")
        with self._cv:
            _local.batch, _local.slot, _local.joined = self, slot, False
            try:
                yield
            finally:
                if not _local.joined:
                    self._expected -= 1
                    self._fire_if_ready()
                _local.batch = None

    def _join(self, flow: GradientFlow) -> None:
        with self._cv:
            _local.joined = True
            self._expected -= 1
            self._live.append(flow)
            self._slots[id(flow)] = _local.slot
            if self._template is None and _batchable(flow):
                self._template = flow
            if self._template is not None and _matches(flow, self._template):
                self._together.add(id(flow))

    def _leave(self, flow: GradientFlow) -> None:
        with self._cv:
            self._live.remove(flow)
            self._together.discard(id(flow))
            self._fire_if_ready()

    def evaluate(self, flow: GradientFlow, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(data term of L, its gradient, f(w, x_train)) of ``flow`` at ``w``, evaluated in
        the next round together with every other live member's state."""
        key = id(flow)
        with self._cv:
            self._posted[key] = w
            self._fire_if_ready()
            while key not in self._results:
                self._cv.wait()
            result = self._results.pop(key)
        if isinstance(result, BaseException):
            raise result
        return result

    def _fire_if_ready(self) -> None:
        """Evaluate the round when every live member has posted (called holding the lock)."""
        if self._expected or not self._posted or len(self._posted) < len(self._live):
            return
        flows = [f for f in self._live if id(f) in self._posted]
        states = [self._posted.pop(id(f)) for f in flows]
        try:
            self._results.update(self._round(flows, states))
        except Exception as e:  # every waiting member hears of it: none waits forever
            self._results.update({id(f): e for f in flows})
        self._cv.notify_all()

    def _round(self, flows: list[GradientFlow], states: list[torch.Tensor]) -> dict[int, object]:
        template = self._template
        together = {self._slots[id(f)]: (f, w) for f, w in zip(flows, states) if id(f) in self._together}
        results: dict[int, object] = {}
        if together and self._batched is not False:
            try:
                values = self._vectorised(template, together)
                results.update({id(f): values[slot] for slot, (f, _) in together.items()})
            except Exception as e:  # torch.func's errors for unsupported operations have no common base
                self._batched = False
                print(f"gflow: note: the ensemble's model does not vectorise ({one_line(e)}); "
                      "its members are evaluated one by one", file=sys.stderr)
        for flow, w in zip(flows, states):
            if id(flow) not in results:
                try:
                    results[id(flow)] = flow.data_term(w)
                except Exception as e:  # the member fails alone, in its own thread
                    results[id(flow)] = e
        return results

    def _vectorised(self, template: GradientFlow, members: dict[int, tuple[GradientFlow, torch.Tensor]]
                    ) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One vmapped forward+backward per chunk over all ``size`` slots; the values of the
        slots in ``members`` (slot -> (flow, state))."""
        if self._batched is None:
            self._batched = _vectorised_terms(template)
            if template.compiles:  # compiled like the members' own evaluations (gflow.compilation)
                self._batched = _compiled_or_eager(self._batched)
        model, k = template.model, self.size
        flows = [members[s][0] if s in members else template for s in range(k)]
        stacked = torch.stack([template.weights(members[s][1]) if s in members else template.w0 for s in range(k)])
        parts = [t.reshape(k, *shape) for t, shape in zip(stacked.split(model.sizes, dim=1), model.shapes)]
        key = tuple(id(f) for f in flows)
        if key not in self._constants:  # the slots' f0 and buffers change only when a member leaves
            self._constants = {key: (torch.stack([f.f0_train for f in flows]), {
                name: torch.stack([dict(f.model.module.named_buffers())[name] for f in flows])
                for name, _ in model.module.named_buffers()})}
        f0, buffers = self._constants[key]
        losses, grads, outs = [], [], []
        for s in template._chunks(len(template.x_train)):
            g, (loss, f) = self._batched(parts, buffers, f0[:, s], template.x_train[s], template.y_train[s])
            grads.append(torch.cat([t.reshape(k, -1) for t in g], dim=1))
            losses.append(loss)
            outs.append(f)
        loss, grad, f = (losses[0], grads[0], outs[0]) if len(grads) == 1 else (
            torch.stack(losses).sum(0), torch.stack(grads).sum(0), torch.cat(outs, dim=1))
        # Each member's own copy: a view would keep the whole batch's tensor alive with it.
        return {s: (loss[s].clone(), grad[s].clone(), f[s].clone()) for s in members}


def _vectorised_terms(template: GradientFlow):
    """vmap over members of grad_and_value of one member's data term on a chunk:
    sum_mu l(alpha (f(w, x_mu) - f0_mu), y_mu) / (alpha^2 n), with f returned as aux."""
    model, alpha, n = template.model, template.alpha, len(template.x_train)
    names = model.names
    functional = getattr(model, "_functional", None)

    def member(parts: list[torch.Tensor], buffers: dict[str, torch.Tensor], f0: torch.Tensor,
               x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if functional is not None and not buffers:
            f = functional(parts, x)
        else:
            f = functional_call(model.module, {**dict(zip(names, parts)), **buffers}, (x,))
            f = f[:, 0] if f.dim() == 2 and f.shape[1] == 1 else f
        a = alpha * (f - f0) if template.cfg.centered else alpha * f
        return template.loss_fn(a, y).sum() / (alpha**2 * n), f

    return vmap(grad_and_value(member, has_aux=True), in_dims=(0, 0, 0, None, None))


def _compiled_or_eager(vectorised: Callable) -> Callable:
    """``vectorised`` through torch.compile (static shapes); after one note on stderr,
    ``vectorised`` itself from the first call that does not compile on."""
    compiled, failed = torch.compile(vectorised, dynamic=False), False

    def call(*args):
        nonlocal failed
        if not failed:
            try:
                return compiled(*args)
            except Exception as e:  # torch._dynamo's and inductor's errors have no common public base
                failed = True
                print(f"gflow: note: the ensemble's vectorised evaluation did not compile ({one_line(e)}); "
                      "evaluating it eagerly", file=sys.stderr)
        return vectorised(*args)

    return call


def _batchable(flow: GradientFlow) -> bool:
    """A plain network (not its linearisation) whose evaluation is the data term alone."""
    return hasattr(flow.model, "names") and hasattr(flow, "data_term")


def _matches(flow: GradientFlow, template: GradientFlow) -> bool:
    """Whether ``flow`` can be evaluated by ``template``'s vectorised function: the same
    architecture, the same config but the seed (so the same loss and scaling) and the same
    training data (a loader reference might draw it from the seed)."""
    if flow is template:
        return True
    a, b = flow.model, template.model
    return (_batchable(flow) and type(a.module) is type(b.module) and a.names == b.names and a.shapes == b.shapes
            and flow.cfg.replace(seed=0) == template.cfg.replace(seed=0)
            and flow.x_train.shape == template.x_train.shape and bool(torch.equal(flow.x_train, template.x_train))
            and bool(torch.equal(flow.y_train, template.y_train)))


def current() -> Batch | None:
    """The batch the calling thread serves, if any."""
    return getattr(_local, "batch", None)


@contextmanager
def joined(flow: GradientFlow) -> Iterator[None]:
    """``flow``'s evaluations go through the calling thread's batch while inside (nothing
    changes on a thread that serves none)."""
    batch = current()
    if batch is None:
        yield
        return
    batch._join(flow)
    flow.batch = batch
    try:
        yield
    finally:
        flow.batch = None
        batch._leave(flow)
