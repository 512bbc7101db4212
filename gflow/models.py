"""Networks with an explicit parametrization, evaluated on one flat parameter vector.

A model is an ``nn.Module`` used only as a description of the architecture: training
state lives in one flat tensor ``w``, and :class:`FlatModel` evaluates ``f(w, x)`` with
``torch.func.functional_call`` on views of ``w`` (no copy of the module per step, and the
gradient with respect to ``w`` comes out flat). Any module works: gflow's own networks
(:class:`FullyConnected`, :class:`ConvNet`) or the user's, mapping a batch to outputs of
shape (n,) or (n, k).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import deepcopy

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .autodiff import JVP
from .errors import ConfigError
from .references import qualified_name

_RAW_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softplus": nn.functional.softplus,
    "relu": torch.relu,
    "swish": nn.functional.silu,
    "tanh": torch.tanh,
}


def _second_moment(phi: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """E[phi(z)^2] for z ~ N(0, 1), by 100-point Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(100)
    values = phi(torch.from_numpy(nodes)).numpy()
    return float(np.sum(weights * values**2) / math.sqrt(2 * math.pi))


def activation_scale(name: str) -> float:
    """1 / sqrt(E[phi(z)^2]) with z ~ N(0, 1), the normalisation of :func:`activation`."""
    return 1.0 / math.sqrt(_second_moment(_RAW_ACTIVATIONS[name]))


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """phi(z) / sqrt(E[phi(z)^2]) with z ~ N(0, 1): normalised so that under the NTK
    scaling every pre-activation stays of unit variance at initialisation, at any depth."""
    phi, scale = _RAW_ACTIVATIONS[name], activation_scale(name)
    return lambda z: phi(z) * scale


def _folded(weights: list[torch.Tensor], multipliers: list[float], scale: float, kappa: float) -> list[torch.Tensor]:
    """The weights with every scalar of the forward pass folded in: W_l c_l s (s, the
    activation's normalisation, for every layer after the first; kappa on the last), so
    that a layer is phi_raw(a W'^T) and its activations are never multiplied by a scalar.
    The same function as c_l (s phi_raw(.)) W_l^T up to rounding; a scalar times a weight
    matrix instead of two passes over the batch's activations and two in the backward: a
    forward+backward 1.2-1.4x faster at h = 100-300 on digits, 1.1x on the CNN (1.0-1.06x at
    h = 1000, where the matrix products dominate)."""
    last = len(weights) - 1
    return [w * (c * (scale if i else 1.0) * (kappa if i == last else 1.0))
            for i, (w, c) in enumerate(zip(weights, multipliers))]


class FullyConnected(nn.Module):
    """f(w, x) = kappa * c_L W^L phi(... phi(c_0 W^0 x)), with ``depth`` hidden layers of
    ``width`` neurons and ``outputs`` outputs (a scalar output, shape (n,), when it is 1).

    Parametrizations (h = width, c_l the forward multiplier of layer l, d_l its fan-in):
      ntk         W ~ N(0, 1),    c_l = 1/sqrt(d_l) for every layer, the last one too
                  (Jacot et al.; seed 001: z^{l+1} = W^l phi(z^l) / sqrt(h));
      mean-field  as ntk but the last layer has c_L = 1/h (seed 001, "mean field limit");
      standard    W ~ N(0, 1/d_l), c_l = 1 (PyTorch-style: same function at
                  initialisation as ntk, different training dynamics).
    ``kappa`` scales the output at initialisation (Li, Luo, Zhou, seed 003). No biases.
    """

    def __init__(self, d: int, width: int, depth: int, act: str, parametrization: str, kappa: float = 1.0,
                 outputs: int = 1):
        super().__init__()
        sizes = [d] + [width] * depth + [outputs]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.empty(n_out, n_in)) for n_in, n_out in zip(sizes[:-1], sizes[1:])
        )
        self.multipliers, self.init_std = _scales(sizes[:-1], width, parametrization)
        self._phi_raw, self._phi_scale = _RAW_ACTIVATIONS[act], activation_scale(act)
        self.kappa = kappa

    def reset_parameters(self, generator: torch.Generator) -> None:
        _reset(self.weights, self.init_std, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.functional(list(self.weights), x)

    def functional(self, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """f(x) with ``weights`` in place of the module's own parameters (the scalars folded
        into the weights: :func:`_folded`)."""
        z = x
        folded = _folded(weights, self.multipliers, self._phi_scale, self.kappa)
        for w in folded[:-1]:
            z = self._phi_raw(z @ w.T)
        z = z @ folded[-1].T
        return z.squeeze(-1) if z.shape[-1] == 1 else z

    def _forward(
        self, weights: list[torch.Tensor], x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """f(x), and for each layer l its input a_l and its product u_l = a_l W_l^T (the
        factors of the per-sample gradients; :meth:`functional` is the evaluation's faster form)."""
        z, inputs, products = x, [], []
        last = len(weights) - 1
        for i, (w, c) in enumerate(zip(weights, self.multipliers)):
            inputs.append(z)
            products.append(z @ w.T)
            z = products[-1] * c
            if i < last:
                z = self._phi_raw(z) * self._phi_scale  # activation(act), as the products' factors need
        return self.kappa * (z.squeeze(-1) if z.shape[-1] == 1 else z), inputs, products

    def hidden(self, weights: list[torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pre-activations c_l a_l W_l^T of every hidden layer, by the name of its weight."""
        _, _, products = self._forward(weights, x)
        return {f"weights.{i}": u * c for i, (u, c) in enumerate(zip(products[:-1], self.multipliers))}

    def tangent_factors(self, weights: list[torch.Tensor], x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each layer l, (a_l, delta_l) with delta_l[c, i] = d f_c(x_i) / d u_l[i] (shape
        (k, n, h_l), k = 1 for a scalar output), so that the per-sample gradient of output c is
        the outer product d f_c(x_i) / d W_l = delta_l[c, i]^T a_l[i].

        One forward and one backward of the batch per output: samples do not interact, so the
        gradient of sum_i f_c(x_i) with respect to u_l holds every sample's delta_l at once.
        The graph is recorded from the input (a leaf), so the weights need not require gradients.
        """
        with torch.enable_grad():
            f, inputs, products = self._forward([w.detach() for w in weights], x.detach().requires_grad_(True))
            columns = [f] if f.dim() == 1 else list(f.unbind(-1))
            per_output = [torch.autograd.grad(fc.sum(), products, retain_graph=True) for fc in columns]
        return [(a.detach(), torch.stack([d[layer] for d in per_output])) for layer, a in enumerate(inputs)]


def _scales(fan_ins: list[int], width: int, parametrization: str) -> tuple[list[float], list[float]]:
    """(forward multipliers c_l, initial standard deviations) of each layer for a parametrization."""
    multipliers = [1.0 / math.sqrt(n) for n in fan_ins]
    if parametrization == "mean-field":
        multipliers[-1] = 1.0 / width
    if parametrization == "standard":
        return [1.0] * len(multipliers), multipliers
    return multipliers, [1.0] * len(multipliers)


def _reset(weights: nn.ParameterList, init_std: list[float], generator: torch.Generator) -> None:
    with torch.no_grad():
        for w, std in zip(weights, init_std):
            w.copy_(torch.randn(w.shape, generator=generator, dtype=w.dtype) * std)


class ConvNet(nn.Module):
    """f(w, x) = kappa * c_L w^L . mean_pixels phi(c_{L-1} W^{L-1} * ... phi(c_0 W^0 * x)):
    ``depth`` 3x3 convolutions of ``width`` channels (stride 1, zero padding), global
    average pooling and a linear readout to ``outputs`` outputs; no biases. Inputs are square images given
    flattened (d = s^2 pixels). The parametrizations are those of :class:`FullyConnected`
    with fan-in 9 x channels for a convolution and ``width`` for the readout."""

    def __init__(self, d: int, width: int, depth: int, act: str, parametrization: str, kappa: float = 1.0,
                 outputs: int = 1):
        super().__init__()
        self.side = math.isqrt(d)
        if self.side**2 != d:
            raise ConfigError("arch", "cnn", f"needs square images, but the inputs have d = {d}, not s x s")
        channels = [1] + [width] * depth
        convs = [nn.Parameter(torch.empty(c_out, c_in, 3, 3)) for c_in, c_out in zip(channels[:-1], channels[1:])]
        self.weights = nn.ParameterList([*convs, nn.Parameter(torch.empty(outputs, width))])
        self.multipliers, self.init_std = _scales([9 * c for c in channels[:-1]] + [width], width, parametrization)
        self._phi_raw, self._phi_scale = _RAW_ACTIVATIONS[act], activation_scale(act)
        self.kappa = kappa

    def reset_parameters(self, generator: torch.Generator) -> None:
        _reset(self.weights, self.init_std, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.functional(list(self.weights), x)  # not a slice: slicing a ParameterList re-wraps (detaches)

    def functional(self, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """f(x) with ``weights`` in place of the module's own parameters (the scalars folded
        into the weights: :func:`_folded`)."""
        z = x.reshape(-1, 1, self.side, self.side)
        *convs, readout = _folded(weights, self.multipliers, self._phi_scale, self.kappa)
        for w in convs:
            z = self._phi_raw(nn.functional.conv2d(z, w, padding=1))
        out = z.mean(dim=(2, 3)) @ readout.T
        return out.squeeze(-1) if out.shape[-1] == 1 else out


ARCHITECTURES: dict[str, type[nn.Module]] = {"fc": FullyConnected, "cnn": ConvNet}


# Layers whose output depends on train/eval mode: a gradient flow needs a deterministic
# function of w, so modules are always evaluated in eval mode (recorded in the description).
_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.modules.instancenorm._InstanceNorm)


class FlatModel:
    """Evaluates a module with its trainable parameters taken from one flat vector ``w``.

    ``model(w, x)`` returns f(w, x) (raw: not centred, not scaled by alpha), of shape (n,)
    for one output (an (n, 1) output is read as (n,)) or (n, k). ``w0`` is the module's own
    trainable parameters flattened; ``layers`` gives the slice of ``w`` of each tensor.
    Parameters with ``requires_grad=False`` and buffers are carried as constants. The
    module is put in eval mode: BatchNorm then uses its running statistics and Dropout is
    off, so f is a deterministic function of w, as a gradient flow needs.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module.train(False)  # eval mode
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("model", qualified_name(module), "has no trainable parameters (requires_grad=True)")
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        offsets = np.cumsum([0] + self.sizes)
        self.layers = {n: slice(int(a), int(b)) for n, a, b in zip(self.names, offsets[:-1], offsets[1:])}
        self.n_params = int(offsets[-1])
        self._w0 = torch.cat([p.detach().reshape(-1) for _, p in named])
        self._functional = getattr(module, "functional", None)
        self.jvp = JVP()  # forward mode, or reverse over reverse where a fused kernel has no forward rule

    @property
    def w0(self) -> torch.Tensor:
        return self._w0.clone()

    def parts(self, w: torch.Tensor) -> list[torch.Tensor]:
        """The module's parameter tensors as views of ``w``: what :meth:`apply` takes."""
        return [t.view(s) for t, s in zip(w.split(self.sizes), self.shapes)]

    def apply(self, parts: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """f(x) with the parameter tensors ``parts`` (those of :meth:`parts`, or leaves made from them)."""
        if self._functional is not None:  # weights passed straight in: functional_call's swapping cost ~10%
            return self._functional(parts, x)
        out = functional_call(self.module, dict(zip(self.names, parts)), (x,))
        return out[:, 0] if out.dim() == 2 and out.shape[1] == 1 else out

    def __call__(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.apply(self.parts(w), x)

    def hidden(self, w: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The hidden representations at parameters ``w``: the outputs of every submodule
        that holds trainable parameters of its own (a Linear's or a Conv's pre-activations),
        the readout (the last one) excluded, by module name; the built-in FC network gives
        its pre-activations directly. Empty when the module has no such submodules."""
        own = getattr(self.module, "hidden", None)
        if own is not None:
            with torch.no_grad():
                return own(self.parts(w), x)
        layers = [(name, m) for name, m in self.module.named_modules()
                  if any(p.requires_grad for p in m.parameters(recurse=False))]
        seen: dict[str, torch.Tensor] = {}

        def keep(name: str, out: object) -> None:
            tensor = _primary(out)
            if tensor is not None:
                seen[name] = tensor.detach()

        hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: keep(name, out)) for name, m in layers[:-1]]
        try:
            with torch.no_grad():
                self(w, x)
        finally:
            for hook in hooks:
                hook.remove()
        return seen

    @property
    def has_tangent_factors(self) -> bool:
        """Whether the architecture gives its per-sample gradients as outer products (dense layers)."""
        return hasattr(self.module, "tangent_factors")

    def tangent_factors(self, w: torch.Tensor, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The module's (a_l, delta_l) per layer at parameters ``w`` (see FullyConnected)."""
        return self.module.tangent_factors(self.parts(w), x)

    def describe(self) -> dict[str, object]:
        """What the file records of the network, readable without the user's code: class,
        repr, trainable parameters (names and shapes), frozen parameters, buffers, and the
        layers whose behaviour depends on train/eval mode (run in eval mode)."""
        module = self.module
        return {
            "class": qualified_name(module),
            "repr": repr(module)[:4000],
            "parameters": [[n, list(s)] for n, s in zip(self.names, self.shapes)],
            "frozen": [n for n, p in module.named_parameters() if not p.requires_grad],
            "buffers": [[n, list(b.shape)] for n, b in module.named_buffers()],
            "eval_mode_layers": [n for n, m in module.named_modules() if isinstance(m, _MODE_DEPENDENT)],
        }


def _primary(out: object) -> torch.Tensor | None:
    """A submodule's representation: its output, or the first tensor of a tuple, list or dict
    output (attention's output before its weights, a recurrent layer's sequence before its
    state); None when there is no tensor."""
    if isinstance(out, torch.Tensor):
        return out
    items = out.values() if isinstance(out, dict) else out if isinstance(out, (tuple, list)) else ()
    return next((t for t in map(_primary, items) if t is not None), None)


def prepare(module: object, dtype: torch.dtype, device: torch.device, reference: str | None = None) -> FlatModel:
    """A user's module ready to integrate: checked to be an ``nn.Module``, copied (the
    caller's object is never changed), cast to ``dtype`` and moved to ``device``.
    ``reference``: the factory it came from, named in errors."""
    name = reference or qualified_name(module)
    if not isinstance(module, nn.Module):
        made = "the factory returned" if reference else "got"
        raise ConfigError("model", name, f"must give a torch.nn.Module ({made} a {type(module).__name__})")
    try:
        copy = deepcopy(module)
    except Exception as e:
        raise ConfigError("model", name, f"cannot be copied ({type(e).__name__}: {e})") from None
    return FlatModel(copy.to(device=device, dtype=dtype))


def batchnorm_layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The module's BatchNorm layers (1d, 2d, 3d, lazy), by name."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def calibrate_batchnorm(model: FlatModel, x: torch.Tensor, chunk: int | None = None) -> dict[str, dict[str, list]]:
    """Set every BatchNorm layer's running statistics to its input's mean and (biased)
    variance per channel over all of ``x`` at the model's w0, layer after layer (a layer's
    input depends on the layers before it, already calibrated), in chunks of ``chunk``
    points. In eval mode the network then normalises the training set's features as a
    full-batch train-mode pass would, and stays a fixed function of w, as a gradient flow
    needs. Returns the statistics, by layer name (what the file records)."""
    recorded = {}
    w0 = model.w0
    size = chunk or max(len(x), 1)
    for name, layer in batchnorm_layers(model.module):
        moments = []

        def collect(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            z = inputs[0].double()
            dims = [0, *range(2, z.dim())]
            moments.append((z[0].numel() // z.shape[1] * len(z), z.sum(dims), z.pow(2).sum(dims)))

        hook = layer.register_forward_pre_hook(collect)
        try:
            with torch.no_grad():
                for i in range(0, len(x), size):
                    model(w0, x[i : i + size])
        finally:
            hook.remove()
        count = sum(c for c, _, _ in moments)
        mean = sum(m for _, m, _ in moments) / count
        var = (sum(q for _, _, q in moments) / count - mean**2).clamp_min(0)
        with torch.no_grad():
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
        recorded[name] = {"mean": mean.tolist(), "var": var.tolist()}
    return recorded


def apply_batchnorm_policy(model: FlatModel, policy: str, x: torch.Tensor, chunk: int | None = None) -> dict:
    """What a run does with the network's BatchNorm layers (config ``batchnorm``): in eval
    mode each is the fixed affine map of its running statistics, which on a fresh module
    are mean 0 and variance 1 (it normalises nothing). ``calibrate``: the statistics of the
    training set at w0 (:func:`calibrate_batchnorm`); ``as-is``: the module's own;
    ``refuse``: a ConfigError. Returns what the file records (empty without BatchNorm)."""
    layers = batchnorm_layers(model.module)
    if not layers:
        return {}
    if policy == "refuse":
        raise ConfigError("batchnorm", policy, f"the network has BatchNorm layers ({', '.join(n for n, _ in layers)}); "
                          "calibrate sets their statistics on the training set at w0, as-is keeps the module's")
    missing = [n for n, m in layers if m.running_mean is None]
    if missing:
        raise ConfigError("model", model.describe()["class"], f"BatchNorm layer {missing[0]} tracks no running "
                          "statistics (track_running_stats=False): in eval mode it would use each batch's own")
    if policy == "as-is":
        return {"policy": policy, "layers": [n for n, _ in layers]}
    return {"policy": policy, "points": len(x), "layers": calibrate_batchnorm(model, x, chunk)}


def build_model(
    d: int, arch: str, depth: int, width: int, act: str, parametrization: str, kappa: float,
    seed: int, dtype: torch.dtype, device: torch.device, outputs: int = 1,
) -> FlatModel:
    """The built-in network of a run, initialised from ``seed`` (same seed, same w0, on any device)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch = {arch!r}: must be one of {', '.join(ARCHITECTURES)}")
    module = ARCHITECTURES[arch](d, width, depth, act, parametrization, kappa, outputs).to(dtype)
    module.reset_parameters(torch.Generator().manual_seed(seed))
    return FlatModel(module.to(device))


class Linearized:
    """The model linearised at w0 (its tangent space; seeds 001, 002):

        f_lin(w, x) = f(w0, x) + J0(x) (w - w0),     J0 = d f(w0, x) / dw,

    evaluated with one Jacobian-vector product per call (forward mode, or reverse over
    reverse for fused kernels without a forward rule: :mod:`gflow.autodiff`), so J0 is never
    formed. Its gradient flow is the kernel gradient flow of the outputs under Theta(w0):
    the lazy limit alpha -> infinity of Chizat, Oyallon, Bach (seed 002).
    """

    def __init__(self, model: FlatModel, w0: torch.Tensor) -> None:
        self.model = model
        self.w0 = w0.detach()
        self.module = model.module
        self.layers = model.layers
        self.n_params = model.n_params

    def __call__(self, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        f0, df = self.jvp(lambda p: self.model(p, x), self.w0, w - self.w0)
        return f0 + df

    @property
    def jvp(self) -> JVP:
        return self.model.jvp

    def parts(self, w: torch.Tensor) -> list[torch.Tensor]:
        return [w]

    def apply(self, parts: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return self(parts[0], x)

    @property
    def has_tangent_factors(self) -> bool:
        return self.model.has_tangent_factors

    def tangent_factors(self, w: torch.Tensor, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Those of the network at w0 for every w: the linearised model's Jacobian is J0."""
        return self.model.tangent_factors(self.w0, x)

    def describe(self) -> dict[str, object]:
        return {**self.model.describe(), "linearized": True}
