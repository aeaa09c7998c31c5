"""Pruning: masks from weights, masks applied as parametrizations, and physical channel removal.

Three layers, as everywhere in the package:

- pure functions compute a mask from weights: :func:`magnitude_mask`, :func:`global_magnitude_masks`,
  :func:`ln_structured_mask`, and the sparsity schedule :func:`polynomial_sparsity`;
- :func:`apply_masks` attaches masks to a model as ``torch.nn.utils.parametrize`` parametrizations
  (the forward pass uses ``mask * weight``, so pruned weights stay exactly zero through any
  optimizer step), :func:`prune_magnitude` and :func:`prune_channels` compute and attach them in
  one call, and :func:`bake` turns them into plain weights;
- training procedures built on :func:`nncompress.train.fit`: :func:`iterative_prune` (Han et al.),
  :func:`gradual_pruning` (Zhu and Gupta), and :func:`lottery_ticket` with :func:`rewind`
  (Frankle and Carbin; Frankle et al.); and experiments that compare them and return plain
  numbers: :func:`sparsity_sweep` and :func:`gradual_vs_one_shot`.

:func:`remove_channels` physically deletes pruned units and channels from an MLP or a LeNet-5,
giving a smaller dense model with the same outputs.

Sparsity is always the fraction of weights *removed*. A layer is named by its module path
(``"fc1"``, ``"conv2"``).

References: han2015learning, zhu2017prune, li2017pruning, frankle2019lottery, frankle2019stabilizing
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import models
from .data import MNIST, load_mnist
from .measure import count_nonzeros, count_params
from .models import MLP, LeNet5
from .parametrizations import own_class
from .train import Recipe, fit

__all__ = [
    "PRUNABLE",
    "Mask",
    "magnitude_mask",
    "global_magnitude_masks",
    "channel_norms",
    "ln_structured_mask",
    "polynomial_sparsity",
    "prunable_layers",
    "apply_masks",
    "masks_of",
    "prune_magnitude",
    "prune_channels",
    "bake",
    "layer_sparsity",
    "load_pruned",
    "remove_channels",
    "SparseLinear",
    "to_sparse",
    "iterative_prune",
    "PruneRecipe",
    "PRUNED",
    "make_pruned",
    "pruned_info",
    "pruned_baseline",
    "pruned_filename",
    "gradual_pruning",
    "sparsity_sweep",
    "gradual_vs_one_shot",
    "rewind",
    "lottery_ticket",
]

PRUNABLE = (nn.Linear, nn.Conv2d)


def _check_sparsity(sparsity, name: str = "sparsity") -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def _check_norm(n) -> float:
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not n > 0:
        raise ValueError(f"n (the L_n norm) must be a positive number or math.inf, got {n!r}")
    return float(n)


def _count(sparsity: float, total: int) -> int:
    """How many of ``total`` entries to prune: round(sparsity * total), as torch.nn.utils.prune does."""
    return round(sparsity * total)


# ---------------------------------------------------------------------------------------------
# (a) masks from tensors


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask that removes the ``round(sparsity * weight.numel())`` entries of smallest ``|weight|``.

    Returns a float tensor of ``weight``'s shape holding 0 (pruned) and 1 (kept). Ties are broken
    by ``torch.topk``, as in ``torch.nn.utils.prune.l1_unstructured``.

    Raises ValueError if ``sparsity`` is not in [0, 1).

    References: han2015learning
    """
    k = _count(_check_sparsity(sparsity), weight.numel())
    mask = torch.ones_like(weight, dtype=torch.float32)
    if k:
        smallest = torch.topk(weight.detach().abs().flatten(), k, largest=False).indices
        mask.view(-1)[smallest] = 0.0
    return mask


def global_magnitude_masks(weights: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Masks that remove the smallest-magnitude ``sparsity`` fraction of *all* the weights together.

    Each layer ends up with its own sparsity, set by how its magnitudes compare with the others'.
    Equivalent to ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``.
    """
    weights = list(weights)
    if not weights:
        raise ValueError("weights must hold at least one tensor")
    flat = torch.cat([w.detach().flatten() for w in weights])  # (total,)
    mask = magnitude_mask(flat, sparsity)
    return [m.view_as(w) for m, w in zip(torch.split(mask, [w.numel() for w in weights]), weights)]


def channel_norms(weight: torch.Tensor, n: float = 2, dim: int = 0) -> torch.Tensor:
    """L_n norm of each slice of ``weight`` along ``dim`` (e.g. of each output filter for dim 0)."""
    n = _check_norm(n)
    if not -weight.dim() <= dim < weight.dim():
        raise ValueError(f"dim must be in [{-weight.dim()}, {weight.dim()}) for a {weight.dim()}-d weight, got {dim}")
    dims = [d for d in range(weight.dim()) if d != dim % weight.dim()]
    return torch.linalg.vector_norm(weight.detach(), ord=n, dim=dims)  # (weight.shape[dim],)


def ln_structured_mask(weight: torch.Tensor, sparsity: float, n: float = 2, dim: int = 0) -> torch.Tensor:
    """Mask that removes the ``round(sparsity * weight.shape[dim])`` slices along ``dim`` of
    smallest L_n norm: whole filters or output units for ``dim=0``, input channels for ``dim=1``.

    Matches ``torch.nn.utils.prune.ln_structured``.

    References: li2017pruning
    """
    sparsity = _check_sparsity(sparsity)
    norms = channel_norms(weight, n, dim)
    keep = weight.shape[dim] - _count(sparsity, weight.shape[dim])
    shape = [1] * weight.dim()
    shape[dim] = -1
    kept = torch.zeros_like(norms, dtype=torch.float32)
    kept[torch.topk(norms, keep, largest=True).indices] = 1.0
    return kept.view(shape).expand_as(weight).clone()


def polynomial_sparsity(step: int, final_sparsity: float, begin_step: int, end_step: int,
                        initial_sparsity: float = 0.0, power: int = 3) -> float:
    """Zhu and Gupta's gradual schedule.

    .. math:: s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{t_1 - t_0}\\right)^{3}, \\quad t_0 \\le t \\le t_1

    with ``s_i`` before ``t_0 = begin_step`` and ``s_f`` after ``t_1 = end_step``.

    References: zhu2017prune
    """
    final_sparsity = _check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = _check_sparsity(initial_sparsity, "initial_sparsity")
    if not 0 <= begin_step < end_step:
        raise ValueError(f"need 0 <= begin_step < end_step, got {begin_step} and {end_step}")
    progress = min(max((step - begin_step) / (end_step - begin_step), 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power


# ---------------------------------------------------------------------------------------------
# (b) masks on models


class Mask(nn.Module):
    """Parametrization ``tensor -> mask * tensor``; the mask is a buffer, so it is saved and copied."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().float().clone())

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * self.mask


def prunable_layers(model: nn.Module, layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """The Linear and Conv2d modules of ``model`` by name, or the named subset ``layers``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    found = {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}
    if layers is None:
        return found
    modules = dict(model.named_modules())
    chosen = {}
    for name in layers:
        if name not in modules:
            raise ValueError(f"model has no layer named {name!r}; prunable layers: {sorted(found)}")
        if not isinstance(modules[name], PRUNABLE):
            raise TypeError(f"layer {name!r} is a {type(modules[name]).__name__}; only Linear and Conv2d can be pruned")
        chosen[name] = modules[name]
    return chosen


def _mask_parametrization(module: nn.Module, tensor_name: str) -> Mask | None:
    if parametrize.is_parametrized(module, tensor_name):
        for p in module.parametrizations[tensor_name]:
            if isinstance(p, Mask):
                return p
    return None


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach ``masks`` (keyed ``"<layer>.weight"`` or ``"<layer>.bias"``) to ``model`` in place.

    A tensor that already has a mask keeps the *intersection* of old and new, so masks only ever
    remove more. Returns ``model``.

    Raises TypeError for a layer that is not Linear or Conv2d, ValueError for an unknown name or
    a mask whose shape differs from the tensor's.
    """
    layers = prunable_layers(model, {key.rpartition(".")[0] for key in masks})
    for key, mask in masks.items():
        layer, _, tensor_name = key.rpartition(".")
        module = layers[layer]
        if tensor_name not in ("weight", "bias") or getattr(module, tensor_name, None) is None:
            raise ValueError(f"{key!r} names no weight or bias of layer {layer!r}")
        if mask.shape != getattr(module, tensor_name).shape:
            raise ValueError(f"mask for {key!r} has shape {tuple(mask.shape)}, the tensor has "
                             f"{tuple(getattr(module, tensor_name).shape)}")
        existing = _mask_parametrization(module, tensor_name)
        if existing is not None:
            existing.mask.mul_(mask.to(existing.mask))
        else:
            own_class(module)
            parametrize.register_parametrization(module, tensor_name, Mask(mask))
    return model


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to ``model``, keyed ``"<layer>.weight"`` / ``"<layer>.bias"``."""
    found = {}
    for name, module in prunable_layers(model).items():
        for tensor_name in ("weight", "bias"):
            mask = _mask_parametrization(module, tensor_name)
            if mask is not None:
                found[f"{name}.{tensor_name}"] = mask.mask.clone()
    return found


def prune_magnitude(model: nn.Module, sparsity: float | Mapping[str, float],
                    layers: Iterable[str] | None = None, scope: str = "layer") -> nn.Module:
    """Mask the smallest-magnitude weights of ``model``'s Linear and Conv2d layers, in place.

    ``scope="layer"`` prunes each layer to ``sparsity`` (a number, or a ``{layer: sparsity}``
    mapping, which then also chooses the layers); ``scope="global"`` ranks all chosen layers'
    weights together. Magnitudes are those of the current effective weights, so pruning an already
    pruned model to a higher sparsity extends its masks. Biases are never pruned. Returns ``model``.

    References: han2015learning
    """
    if isinstance(sparsity, Mapping):
        if scope != "layer":
            raise ValueError("a per-layer sparsity mapping needs scope='layer'")
        layers = list(sparsity)
    chosen = prunable_layers(model, layers)
    if scope == "layer":
        per_layer = sparsity if isinstance(sparsity, Mapping) else {name: sparsity for name in chosen}
        masks = {f"{name}.weight": magnitude_mask(chosen[name].weight, s) for name, s in per_layer.items()}
    elif scope == "global":
        names = list(chosen)
        found = global_magnitude_masks([chosen[n].weight for n in names], sparsity)
        masks = {f"{n}.weight": m for n, m in zip(names, found)}
    else:
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    return apply_masks(model, masks)


def prune_channels(model: nn.Module, sparsity: float | Mapping[str, float], n: float = 2,
                   layers: Iterable[str] | None = None) -> nn.Module:
    """Mask whole output channels (filters of a Conv2d, units of a Linear) of smallest L_n norm.

    The bias of a pruned channel is masked too, so the channel outputs exactly zero and
    :func:`remove_channels` can delete it without changing the model's function. By default every
    prunable layer but the last (whose outputs are the classes) is pruned. Returns ``model``.

    References: li2017pruning, he2018soft
    """
    n = _check_norm(n)
    if isinstance(sparsity, Mapping):
        layers = list(sparsity)
    chosen = prunable_layers(model, layers)
    if layers is None:
        chosen = dict(list(chosen.items())[:-1])
    per_layer = sparsity if isinstance(sparsity, Mapping) else {name: sparsity for name in chosen}
    masks = {}
    for name, s in per_layer.items():
        module = chosen[name]
        weight_mask = ln_structured_mask(module.weight, s, n, dim=0)
        masks[f"{name}.weight"] = weight_mask
        if module.bias is not None:
            masks[f"{name}.bias"] = weight_mask.flatten(1)[:, 0].clone()  # (out,)
    return apply_masks(model, masks)


def bake(model: nn.Module) -> nn.Module:
    """Replace every mask parametrization by a plain parameter holding ``mask * weight``, in place."""
    for module in prunable_layers(model).values():
        for tensor_name in ("weight", "bias"):
            if _mask_parametrization(module, tensor_name) is not None:
                own_class(module)
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return model


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Exact fraction of zero entries in each prunable layer's effective weight."""
    return {name: 1.0 - int(torch.count_nonzero(m.weight)) / m.weight.numel()
            for name, m in prunable_layers(model).items()}


def load_pruned(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a pruned model's ``state_dict`` into a fresh, unpruned ``model`` of the same architecture,
    re-creating its masks first. Returns ``model``."""
    suffix = ".0.mask"
    masks = {}
    for key, value in state_dict.items():
        if ".parametrizations." in key and key.endswith(suffix):
            layer, _, rest = key.partition(".parametrizations.")
            masks[f"{layer}.{rest[: -len(suffix)]}"] = value
    apply_masks(model, masks)
    model.load_state_dict(state_dict)
    return model


# ---------------------------------------------------------------------------------------------
# physical removal


def _alive(module: nn.Module) -> torch.Tensor:
    """Indices of output channels that can produce a non-zero output (weight slice or bias non-zero)."""
    alive = module.weight.detach().flatten(1).ne(0).any(1)
    if module.bias is not None:
        alive |= module.bias.detach().ne(0)
    if not alive.any():
        alive[0] = True  # keep one (all-zero) channel so that every layer keeps a valid shape
    return alive.nonzero().flatten()


def _copy_into(target: nn.Module, source: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> None:
    with torch.no_grad():
        target.weight.copy_(source.weight.detach()[rows][:, cols])
        if source.bias is not None:
            target.bias.copy_(source.bias.detach()[rows])


def remove_channels(model: nn.Module) -> nn.Module:
    """A smaller dense copy of ``model`` without its dead channels, computing the same function.

    A channel is dead when its effective weight slice and bias are all zero (as after
    :func:`prune_channels`); it and the matching inputs of the next layer are deleted. Supports
    :class:`~nncompress.models.MLP` (hidden units) and :class:`~nncompress.models.LeNet5`
    (conv1 and conv2 filters, fc1 units); the classes are never removed. The original model is
    left unchanged.

    Raises TypeError for any other model type.
    """
    if isinstance(model, MLP):
        layers = [getattr(model, f"fc{i}") for i in range(1, model.depth + 1)]
        keep = [_alive(layer) for layer in layers[:-1]]
        small = MLP(tuple(len(k) for k in keep), dropout=model.dropout.p, input_dropout=model.input_dropout.p,
                    in_features=layers[0].in_features, num_classes=layers[-1].out_features)
        inputs = [torch.arange(layers[0].in_features)] + keep
        outputs = keep + [torch.arange(layers[-1].out_features)]
        for i, layer in enumerate(layers):
            _copy_into(getattr(small, f"fc{i + 1}"), layer, outputs[i], inputs[i])
    elif isinstance(model, LeNet5):
        k1, k2, k3 = _alive(model.conv1), _alive(model.conv2), _alive(model.fc1)
        small = LeNet5((len(k1), len(k2)), len(k3), model.fc2.out_features)
        spatial = model.fc1.in_features // model.conv2.out_channels  # 4 x 4 positions per channel
        fc1_cols = (k2[:, None] * spatial + torch.arange(spatial)).flatten()  # flattened (channel, y, x)
        _copy_into(small.conv1, model.conv1, k1, torch.arange(model.conv1.in_channels))
        _copy_into(small.conv2, model.conv2, k2, k1)
        _copy_into(small.fc1, model.fc1, k3, fc1_cols)
        _copy_into(small.fc2, model.fc2, torch.arange(model.fc2.out_features), k3)
    else:
        raise TypeError(f"remove_channels supports MLP and LeNet5 models, got {type(model).__name__}")
    return small.train(model.training)


# ---------------------------------------------------------------------------------------------
# sparse storage and kernels


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored in CSR format and applied with a sparse kernel.

    ``forward`` computes ``(W x^T)^T + b`` with ``torch.sparse.mm``; the state_dict holds the CSR
    arrays (values, column indices, row offsets) instead of the dense matrix.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"weight must be 2-d (out, in), got shape {tuple(weight.shape)}")
        with warnings.catch_warnings():  # CSR support is flagged as beta; the numbers are tested
            warnings.simplefilter("ignore", UserWarning)
            self.weight = nn.Parameter(weight.detach().to_sparse_csr(), requires_grad=False)  # (out, in)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "SparseLinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.sparse.mm(self.weight, x.t()).t()  # (batch, out)
        return out if self.bias is None else out + self.bias


def to_sparse(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Linear layer (masks baked in) replaced by :class:`SparseLinear`."""
    model = bake(copy.deepcopy(model))
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, SparseLinear.from_dense(module))
    return model


# ---------------------------------------------------------------------------------------------
# (c) procedures


def iterative_prune(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    schedule: Sequence[float | Mapping[str, float]], recipe: Recipe, seed: int = 0,
                    scope: str = "layer", layers: Iterable[str] | None = None,
                    on_round: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Han et al.'s prune-and-retrain loop: for each sparsity in ``schedule``, prune by magnitude,
    then retrain the surviving weights with ``recipe``. ``on_round(i, model)`` runs after each
    round. Returns ``model`` (pruned in place, masks attached).

    References: han2015learning
    """
    if not schedule:
        raise ValueError("schedule must hold at least one sparsity")
    for i, sparsity in enumerate(schedule):
        prune_magnitude(model, sparsity, layers=layers, scope=scope)
        fit(model, x, y, recipe, seed=seed + i)
        if on_round is not None:
            on_round(i, model)
    return model


def gradual_pruning(final_sparsity: float, begin_step: int, end_step: int, frequency: int = 100,
                    initial_sparsity: float = 0.0, layers: Iterable[str] | None = None,
                    scope: str = "layer") -> Callable[[int, nn.Module], None]:
    """A step callback for :func:`nncompress.train.fit` that prunes by magnitude every
    ``frequency`` steps from ``begin_step`` to ``end_step``, following :func:`polynomial_sparsity`.

    References: zhu2017prune
    """
    polynomial_sparsity(begin_step, final_sparsity, begin_step, end_step, initial_sparsity)  # validates
    if not isinstance(frequency, int) or frequency < 1:
        raise ValueError(f"frequency must be a positive int, got {frequency!r}")
    layers = None if layers is None else list(layers)

    def callback(step: int, model: nn.Module) -> None:
        due = (step - begin_step) % frequency == 0 or step == end_step
        if begin_step <= step <= end_step and due:
            s = polynomial_sparsity(step, final_sparsity, begin_step, end_step, initial_sparsity)
            prune_magnitude(model, s, layers=layers, scope=scope)

    return callback


@contextlib.contextmanager
def _dropout_rates(model: nn.Module, rates: Mapping[str, float]):
    """Set the named ``nn.Dropout`` modules of ``model`` to the given rates, restoring them on exit."""
    modules = {name: model.get_submodule(name) for name in rates}
    saved = {name: m.p for name, m in modules.items()}
    try:
        for name, m in modules.items():
            m.p = rates[name]
        yield model
    finally:
        for name, m in modules.items():
            m.p = saved[name]


def _check_dropout(model: nn.Module, rates: Mapping[str, float]) -> None:
    for name, p in rates.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            module = None
        if not isinstance(module, nn.Dropout):
            raise ValueError(f"dropout names {name!r}, which is not an nn.Dropout module of the model")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise ValueError(f"dropout rate for {name!r} must be a number in [0, 1), got {p!r}")


def sparsity_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sparsities: Sequence[float],
                   recipe: Recipe, score: Callable[[nn.Module], float], seed: int = 0, scope: str = "layer",
                   layers: Iterable[str] | None = None,
                   dropout: Mapping[str, float] | None = None) -> dict[str, list[float]]:
    """Score one-shot and iterative magnitude pruning of a trained ``model`` at each of ``sparsities``.

    Three procedures, each pruning with :func:`prune_magnitude` (``scope``, ``layers``):

    - ``"one-shot"``: a copy of ``model`` pruned to ``s``, not retrained;
    - ``"one-shot + retrain"``: that copy, then retrained on ``(x, y)`` with ``recipe`` and ``seed``;
    - ``"iterative"``: one copy carried through the whole sweep, pruned to each ``s`` in turn and
      retrained after each cut, with ``recipe`` and ``seed`` (:func:`iterative_prune`, one round per
      sparsity), as in Han et al.'s prune-and-retrain loop.

    ``dropout`` maps names of ``nn.Dropout`` modules to the rate they use while retraining; their
    own rates are restored afterwards. ``model`` itself is left unchanged.

    Returns ``{procedure: [score(pruned model) for s in sparsities]}``, three lists of
    ``len(sparsities)`` numbers, e.g. test errors when ``score`` is one.

    Raises ValueError if ``sparsities`` is empty, not strictly increasing, or holds a value outside
    [0, 1); if ``dropout`` names a module that is not an ``nn.Dropout`` or a rate outside [0, 1);
    or for a bad ``scope`` or layer name, as :func:`prune_magnitude` does.

    References: han2015learning
    """
    sparsities = [_check_sparsity(s, "each of sparsities") for s in sparsities]
    if not sparsities or any(b <= a for a, b in zip(sparsities, sparsities[1:])):
        raise ValueError(f"sparsities must be a non-empty, strictly increasing sequence, got {sparsities}")
    if not callable(score):
        raise TypeError(f"score must be a callable model -> float, got {type(score).__name__}")
    dropout = dict(dropout or {})
    _check_dropout(model, dropout)
    layers = None if layers is None else list(layers)
    curves: dict[str, list[float]] = {"one-shot": [], "one-shot + retrain": [], "iterative": []}
    chain = copy.deepcopy(model)
    for s in sparsities:
        once = prune_magnitude(copy.deepcopy(model), s, layers=layers, scope=scope)
        curves["one-shot"].append(score(once))
        with _dropout_rates(once, dropout):
            fit(once, x, y, recipe, seed=seed)
        curves["one-shot + retrain"].append(score(once))
        with _dropout_rates(chain, dropout):
            iterative_prune(chain, x, y, [s], recipe, seed=seed, scope=scope, layers=layers)
        curves["iterative"].append(score(chain))
    return curves


def gradual_vs_one_shot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, final_sparsity: float,
                        recipe: Recipe, score: Callable[[nn.Module], float], end_step: int,
                        begin_step: int = 0, frequency: int = 100, seed: int = 0, scope: str = "layer",
                        layers: Iterable[str] | None = None, trace_every: int = 0) -> dict:
    """Score gradual against one-shot magnitude pruning of a trained ``model``, with equal budgets.

    Both procedures train a copy of ``model`` on ``(x, y)`` with ``recipe`` and ``seed``:

    - ``"gradual"``: pruned during training by :func:`gradual_pruning` from step ``begin_step`` to
      ``end_step`` (steps count from 1), every ``frequency`` steps, on Zhu and Gupta's cubic
      schedule to ``final_sparsity``, and fine-tuned for the remaining steps;
    - ``"one-shot"``: pruned to ``final_sparsity`` by :func:`prune_magnitude` before training,
      then fine-tuned for the whole budget.

    Returns ``{"gradual": score, "one-shot": score, "trace": [(step, sparsity), ...]}``, where
    ``trace`` holds the gradual model's sparsity over *all* its parameters, biases included
    (``1 - count_nonzeros / count_params``), after every ``trace_every``-th step; it is empty when
    ``trace_every`` is 0. ``model`` itself is left unchanged.

    Raises ValueError if ``final_sparsity`` is outside [0, 1), if ``begin_step < end_step`` fails,
    if ``end_step`` exceeds the ``recipe.epochs * ceil(len(x) / recipe.batch_size)`` steps of
    training, if ``frequency`` is not a positive int, if ``trace_every`` is not an int >= 0, or for
    a bad ``scope`` or layer name, as :func:`prune_magnitude` does.

    References: zhu2017prune
    """
    total_steps = recipe.epochs * -(-len(x) // recipe.batch_size)
    if isinstance(end_step, bool) or not isinstance(end_step, int) or end_step > total_steps:
        raise ValueError(f"end_step must be an int in ({begin_step}, {total_steps}] (the recipe's steps), "
                         f"got {end_step!r}")
    if isinstance(trace_every, bool) or not isinstance(trace_every, int) or trace_every < 0:
        raise ValueError(f"trace_every must be an int >= 0 (0: no trace), got {trace_every!r}")
    if not callable(score):
        raise TypeError(f"score must be a callable model -> float, got {type(score).__name__}")
    layers = None if layers is None else list(layers)
    schedule = gradual_pruning(final_sparsity, begin_step, end_step, frequency, layers=layers, scope=scope)
    oneshot = prune_magnitude(copy.deepcopy(model), final_sparsity, layers=layers, scope=scope)
    trace: list[tuple[int, float]] = []

    def step(s: int, m: nn.Module) -> None:
        schedule(s, m)
        if trace_every and s % trace_every == 0:
            trace.append((s, 1 - count_nonzeros(m) / count_params(m)))

    gradual = copy.deepcopy(model)
    fit(gradual, x, y, recipe, seed=seed, on_step_end=step)
    fit(oneshot, x, y, recipe, seed=seed)
    return {"gradual": score(gradual), "one-shot": score(oneshot), "trace": trace}


def rewind(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Set ``model``'s weights to those of ``state`` (a plain, unpruned ``state_dict``), keeping
    its masks: the pruned weights stay zero, the surviving ones take ``state``'s values. In place.

    References: frankle2019lottery, frankle2019stabilizing
    """
    with torch.no_grad():
        for key, value in state.items():
            layer, _, tensor_name = key.rpartition(".")
            module = model.get_submodule(layer) if layer else model
            if parametrize.is_parametrized(module, tensor_name):
                module.parametrizations[tensor_name].original.copy_(value)
            else:
                getattr(module, tensor_name).copy_(value)
    return model


def lottery_ticket(make_model: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
                   sparsity: float, rounds: int = 1, rewind_step: int = 0, seed: int = 0,
                   layers: Iterable[str] | None = None, scope: str = "layer") -> nn.Module:
    """Find a lottery ticket by iterative magnitude pruning with rewinding.

    Initialize a model with ``seed``; train it with ``recipe``; prune so that after round ``r``
    the sparsity is ``1 - (1 - sparsity) ** (r / rounds)``; rewind the surviving weights to their
    values at step ``rewind_step`` (0: the initialization, as Frankle and Carbin; a small positive
    step: the rewinding of Frankle et al.), and repeat. Returns the masked, rewound, *untrained*
    ticket; train it with :func:`nncompress.train.fit`.

    References: frankle2019lottery, frankle2019stabilizing
    """
    sparsity = _check_sparsity(sparsity)
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if not isinstance(rewind_step, int) or rewind_step < 0:
        raise ValueError(f"rewind_step must be a non-negative int, got {rewind_step!r}")
    torch.manual_seed(seed)
    model = make_model()
    saved = {"state": copy.deepcopy(model.state_dict())} if rewind_step == 0 else {}

    def capture(step: int, m: nn.Module) -> None:
        if step == rewind_step and "state" not in saved:
            saved["state"] = {k: v.detach().clone() for k, v in _plain_state(m).items()}

    layers = None if layers is None else list(layers)
    for r in range(1, rounds + 1):
        fit(model, x, y, recipe, seed=seed + r, on_step_end=capture if r == 1 and rewind_step else None)
        if "state" not in saved:
            raise ValueError(f"rewind_step {rewind_step} is beyond the first round's training steps")
        prune_magnitude(model, 1.0 - (1.0 - sparsity) ** (r / rounds), layers=layers, scope=scope)
        rewind(model, saved["state"])
    return model


def _plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``state_dict`` with each parametrized tensor under its plain name and its *original* value."""
    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            if key.endswith(".original"):
                layer, _, rest = key.partition(".parametrizations.")
                state[f"{layer}.{rest[: -len('.original')]}"] = value
        else:
            state[key] = value
    return state

