"""Cross-layer sharing: layers that use one weight Parameter, as ALBERT's layers do.

References: lan2020albert
"""

from __future__ import annotations

import copy

from torch import nn

from .. import layers as L
from .. import parametrizations, validate

__all__ = ["tie_weights", "tie_weights_"]


def tie_weights_(model: nn.Module, layers: L.Layers) -> nn.Module:
    """:func:`tie_weights` in place: the chosen layers of ``model`` itself share one weight.

    Parameters
    ----------
    model, layers
        As for :func:`tie_weights`; ``model`` is changed.

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    TypeError, ValueError
        As :func:`tie_weights`.

    References: lan2020albert
    """
    validate.module(model)
    if layers is None:
        raise ValueError("layers must choose the layers to tie (at least two), got None")
    chosen = L.select(model, layers)
    names = list(chosen)
    if len(names) < 2:
        raise ValueError(f"layers must choose at least two layers to tie, got {names}")
    first = chosen[names[0]]
    for name in names:
        if parametrizations.chain(chosen[name], "weight"):
            raise ValueError(f"layers: {name} is parametrized; bake it first (nncompress.parametrizations.bake)")
        if chosen[name].weight.shape != first.weight.shape:
            raise ValueError(f"layers: {name}'s weight {tuple(chosen[name].weight.shape)} does not match "
                             f"{names[0]}'s {tuple(first.weight.shape)}")
    for name in names[1:]:
        chosen[name].weight = first.weight
    return model


def tie_weights(model: nn.Module, layers: L.Layers) -> nn.Module:
    """A copy of ``model`` whose chosen layers share one weight Parameter (cross-layer sharing).

    Every chosen layer gets the weight Parameter of the first one in module order, so they are
    stored once and train together (each step adds all their gradients). Biases stay separate.
    ``copy.deepcopy`` and ``state_dict`` keep the tie.

    Parameters
    ----------
    model
        Any module; left unchanged.
    layers
        At least two Linear or Conv2d layers of one weight shape (:func:`nncompress.layers.select`).

    Returns
    -------
    nn.Module
        The new model.

    Raises
    ------
    TypeError
        If ``model`` is not a module or ``layers`` names a layer of another type.
    ValueError
        If ``layers`` chooses fewer than two layers, layers whose weight shapes differ, or a
        parametrized layer.

    References: lan2020albert
    """
    validate.module(model)
    return tie_weights_(copy.deepcopy(model), layers)
