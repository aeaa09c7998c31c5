"""Masks on models: attach, find, compute by magnitude, and rewind the weights under them.

A mask is a :class:`Mask` parametrization attached through :mod:`nncompress.parametrizations`:
the forward pass uses ``mask * weight``, so pruned weights stay exactly zero through any
optimizer step, and the mask is saved with the ``state_dict`` and copied by ``deepcopy``.
Bake masks into plain weights with ``nncompress.parametrizations.bake(model, Mask)``.

Masks are keyed ``"<layer>.<tensor>"`` (``"fc1.weight"``, ``"encoder.layer.3.output.dense.bias"``;
a bare layer's own tensors are ``"weight"`` and ``"bias"``). Functions without a trailing ``_``
return a new model and leave their input untouched; those ending in ``_`` work in place.

References: han2015learning, frankle2019lottery, frankle2019stabilizing
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import torch
from torch import nn

from .. import layers as L
from .. import parametrizations, validate
from .criteria import global_magnitude_masks, magnitude_mask

__all__ = ["Mask", "apply_masks", "apply_masks_", "masks_of", "prune_magnitude", "prune_magnitude_",
           "layer_sparsity", "load_pruned", "rewind", "rewind_"]


class Mask(nn.Module):
    """Parametrization ``tensor -> mask * tensor``; the mask is a float buffer of 0s and 1s.

    Parameters
    ----------
    mask
        A tensor of the parametrized tensor's shape (bool or 0/1 numbers).

    References
    ----------
    han2015learning
    """

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().float().clone())

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * self.mask


def key(layer: str, tensor_name: str) -> str:
    """The mask key of ``layer``'s tensor: ``"<layer>.<tensor>"`` (``"<tensor>"`` for the model itself).

    Parameters
    ----------
    layer
        A qualified layer name (``""`` for the model itself).
    tensor_name
        ``"weight"`` or ``"bias"``.

    Returns
    -------
    str
        The key.
    """
    return f"{layer}.{tensor_name}" if layer else tensor_name


def _targets(model: nn.Module, masks: Mapping) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """``(layer, tensor name, mask)`` for each entry of ``masks``, validated against ``model``."""
    modules = dict(model.named_modules())
    found = []
    for k, mask in masks.items():
        if not isinstance(k, str):
            raise TypeError(f"masks keys must be str (\"<layer>.weight\"), got {type(k).__name__} {k!r}")
        layer, _, tensor_name = k.rpartition(".")
        module = modules.get(layer)
        if module is None:
            raise ValueError(f"masks: {k!r} names no layer of the model (layers are named exactly, "
                             f"as in model.named_modules())")
        if not isinstance(module, L.WEIGHTED):
            raise TypeError(f"masks: {k!r} is a tensor of a {type(module).__name__}; masks go on Linear "
                            f"and Conv2d layers")
        if tensor_name not in ("weight", "bias") or getattr(module, tensor_name, None) is None:
            raise ValueError(f"masks: {k!r} names no weight or bias of layer {layer!r}")
        validate.tensor(mask, f"masks[{k!r}]")
        if mask.shape != getattr(module, tensor_name).shape:
            raise ValueError(f"masks[{k!r}] has shape {tuple(mask.shape)}, the tensor has "
                             f"{tuple(getattr(module, tensor_name).shape)}")
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"masks[{k!r}] must hold only 0 and 1 (or False and True)")
        found.append((module, tensor_name, mask))
    return found


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Attach ``masks`` to ``model``'s Linear and Conv2d tensors, in place.

    A tensor that already has a mask keeps the *intersection* of old and new, so masks only
    ever remove more.

    Parameters
    ----------
    model
        Any module.
    masks
        ``{"<layer>.weight" or "<layer>.bias": mask}``, each mask of the tensor's shape, holding
        0 and 1; layers are named exactly (as in ``model.named_modules()``).

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    TypeError
        If ``model`` is not a module, ``masks`` not a mapping or a mask not a tensor, or a named
        layer is not a Linear or Conv2d.
    ValueError
        For an unknown layer or tensor, a mask of the wrong shape, or one with values other than 0 and 1.

    References
    ----------
    han2015learning
    """
    validate.module(model)
    validate.mapping(masks, "masks")
    for module, tensor_name, mask in _targets(model, masks):  # all validated before any change
        existing = [p for p in parametrizations.chain(module, tensor_name) if isinstance(p, Mask)]
        if existing:
            existing[-1].mask.mul_(mask.to(existing[-1].mask))
        else:
            parametrizations.attach_(module, tensor_name, Mask(mask.to(getattr(module, tensor_name).device)))
    return model


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` with ``masks`` attached (see :func:`apply_masks_`); ``model`` is left unchanged.

    Parameters
    ----------
    model, masks
        As :func:`apply_masks_`.

    Returns
    -------
    nn.Module
        The new, masked model.

    Raises
    ------
    TypeError, ValueError
        As :func:`apply_masks_`.

    References
    ----------
    han2015learning
    """
    validate.module(model)
    return apply_masks_(copy.deepcopy(model), masks)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks attached to ``model``.

    Parameters
    ----------
    model
        Any module.

    Returns
    -------
    dict
        ``{"<layer>.<tensor>": mask}`` in module order, copies of the float masks.

    Raises
    ------
    TypeError
        If ``model`` is not a module.

    References
    ----------
    han2015learning
    """
    return {k: p.mask.clone() for k, p in parametrizations.find(model, Mask).items()}


def _magnitude_masks(model: nn.Module, sparsity, layers, scope: str) -> dict[str, torch.Tensor]:
    """The weight masks that :func:`prune_magnitude_` attaches."""
    validate.choice(scope, "scope", ("layer", "global"))
    if isinstance(sparsity, Mapping):
        if scope != "layer":
            raise ValueError("scope must be 'layer' when sparsity is a per-layer mapping")
        if layers is not None:
            raise ValueError("pass either layers or a per-layer sparsity mapping, not both")
        per_layer = {n: validate.fraction(s, f"sparsity[{n!r}]") for n, s in L.select_values(model, sparsity).items()}
    else:
        per_layer = dict.fromkeys(L.select(model, layers), validate.fraction(sparsity, "sparsity"))
    chosen = {n: model.get_submodule(n) for n in per_layer}
    if scope == "global":
        found = global_magnitude_masks([m.weight for m in chosen.values()], sparsity)
        return {key(n, "weight"): m for n, m in zip(chosen, found)}
    return {key(n, "weight"): magnitude_mask(chosen[n].weight, s) for n, s in per_layer.items()}


def prune_magnitude_(model: nn.Module, sparsity: float | Mapping, layers: L.Layers = None,
                     scope: str = "layer") -> nn.Module:
    """Mask the smallest-magnitude weights of ``model``'s Linear and Conv2d layers, in place.

    Magnitudes are those of the current effective weights, so pruning an already pruned model
    to a higher sparsity extends its masks (and a lower one changes nothing). Biases are never
    pruned.

    Parameters
    ----------
    model
        Any module.
    sparsity
        The fraction of weights to remove, in [0, 1); or, with ``scope="layer"``, a mapping from
        layer names, glob patterns or types to fractions (later keys override earlier ones),
        which then also chooses the layers.
    layers
        The layers to prune (see :func:`nncompress.layers.select`); None: every Linear and Conv2d.
    scope
        ``"layer"``: each layer to ``sparsity``; ``"global"``: one threshold over the weights of
        all the chosen layers together.

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    TypeError
        For a non-module ``model``, a non-numeric sparsity, or a selected layer of another type.
    ValueError
        For a sparsity outside [0, 1), an unknown ``scope`` or layer, a mapping with
        ``scope="global"``, or a mapping together with ``layers``.

    References
    ----------
    han2015learning
    """
    validate.module(model)
    return apply_masks_(model, _magnitude_masks(model, sparsity, layers, scope))


def prune_magnitude(model: nn.Module, sparsity: float | Mapping, layers: L.Layers = None,
                    scope: str = "layer") -> nn.Module:
    """A copy of ``model`` pruned by magnitude (see :func:`prune_magnitude_`); ``model`` is left unchanged.

    Parameters
    ----------
    model, sparsity, layers, scope
        As :func:`prune_magnitude_`.

    Returns
    -------
    nn.Module
        The new, masked model.

    Raises
    ------
    TypeError, ValueError
        As :func:`prune_magnitude_`.

    References
    ----------
    han2015learning
    """
    validate.module(model)
    return prune_magnitude_(copy.deepcopy(model), sparsity, layers, scope)


def layer_sparsity(model: nn.Module, layers: L.Layers = None) -> dict[str, float]:
    """The exact fraction of zero entries in each Linear and Conv2d layer's effective weight.

    Parameters
    ----------
    model
        Any module.
    layers
        The layers to report (see :func:`nncompress.layers.select`); None: every Linear and Conv2d.

    Returns
    -------
    dict
        ``{layer name: fraction of zeros}`` in module order.

    Raises
    ------
    TypeError, ValueError
        As :func:`nncompress.layers.select`.

    References
    ----------
    han2015learning
    """
    return {name: 1.0 - int(torch.count_nonzero(m.weight)) / m.weight.numel()
            for name, m in L.select(model, layers).items()}


_MASK_KEY = re.compile(r"^(?:(?P<layer>.*)\.)?parametrizations\.(?P<tensor>[^.]+)\.\d+\.mask$")


def load_pruned(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a masked model's ``state_dict`` into ``model``, an unmasked model of the same architecture.

    The masks recorded in ``state_dict`` are attached first, then the state is loaded (strictly),
    in place, as ``load_state_dict`` does.

    Parameters
    ----------
    model
        A fresh model of the architecture that ``state_dict`` was saved from.
    state_dict
        The ``state_dict`` of a model pruned with this module.

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    TypeError
        If ``model`` is not a module or ``state_dict`` not a mapping.
    ValueError, RuntimeError
        For masks that do not fit ``model`` (ValueError) or other keys that do not match (RuntimeError,
        from ``load_state_dict``).

    References
    ----------
    han2015learning
    """
    validate.module(model)
    validate.mapping(state_dict, "state_dict")
    masks = {}
    for k, value in state_dict.items():
        match = _MASK_KEY.match(k)
        if match:
            masks[key(match["layer"] or "", match["tensor"])] = value
    apply_masks_(model, masks)
    model.load_state_dict(state_dict)
    return model


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state with each parametrized tensor under its plain name and its *original* value.

    Parameters
    ----------
    model
        Any module, masked or not.

    Returns
    -------
    dict
        A ``state_dict`` that loads into the unmasked architecture.
    """
    state = {}
    for k, value in model.state_dict().items():
        if ".parametrizations." in f".{k}":
            if k.endswith(".original"):
                layer, _, rest = f".{k}".partition(".parametrizations.")
                state[key(layer[1:], rest[: -len(".original")])] = value
        else:
            state[k] = value
    return state


def rewind_(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Set ``model``'s weights to those of ``state``, keeping its masks, in place.

    Pruned weights stay zero and the surviving ones take ``state``'s values.

    Parameters
    ----------
    model
        A (masked) model.
    state
        A plain, unmasked ``state_dict`` of the same architecture (``{"fc1.weight": ...}``), e.g.
        saved before pruning; it may hold a subset of the tensors.

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    TypeError
        If ``model`` is not a module or ``state`` not a mapping.
    ValueError
        If ``state`` names a tensor ``model`` does not have, or one of another shape.

    References
    ----------
    frankle2019lottery, frankle2019stabilizing
    """
    validate.module(model)
    validate.mapping(state, "state")
    modules = dict(model.named_modules())
    targets = []
    for k, value in state.items():
        layer, _, tensor_name = k.rpartition(".")
        module = modules.get(layer)
        target = None if module is None else getattr(module, tensor_name, None)
        if not isinstance(target, torch.Tensor):
            raise ValueError(f"state names {k!r}, which is not a tensor of the model")
        target = parametrizations.original(module, tensor_name)
        if target.shape != value.shape:
            raise ValueError(f"state[{k!r}] has shape {tuple(value.shape)}, the model's tensor {tuple(target.shape)}")
        targets.append((target, value))
    with torch.no_grad():
        for target, value in targets:
            target.copy_(value)
    return model


def rewind(model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` rewound to ``state`` (see :func:`rewind_`); ``model`` is left unchanged.

    Parameters
    ----------
    model, state
        As :func:`rewind_`.

    Returns
    -------
    nn.Module
        The new model.

    Raises
    ------
    TypeError, ValueError
        As :func:`rewind_`.

    References
    ----------
    frankle2019lottery, frankle2019stabilizing
    """
    validate.module(model)
    return rewind_(copy.deepcopy(model), state)
