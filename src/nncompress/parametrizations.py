"""The one place where techniques attach, find and bake parametrizations.

Pruning masks, fake quantizers, binary and ternary weights and shared weights are all
``torch.nn.utils.parametrize`` parametrizations: the forward pass uses ``p(original)`` in place
of a plain tensor, so a technique stays explicit (it shows in ``print(model)`` and in the
``state_dict``), survives ``copy.deepcopy`` and trains through any optimizer. Several may be
chained on one tensor (a mask, then a quantizer); they apply in the order they were attached.

One subtlety is handled here once for every technique. ``parametrize`` gives each parametrized
module a class of its own, holding the parametrized tensors as properties, and
``copy.deepcopy`` shares that class between the original and the copy. Registering or removing
a parametrization edits the class, so a change to a copy would silently break the original (an
``AttributeError`` on its next forward pass). :func:`own_class` gives a module a private class
first, and :func:`attach_` and :func:`bake_` always call it.

Naming follows torch: :func:`bake` returns a new model and leaves its input untouched;
:func:`attach_` and :func:`bake_` work in place.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import validate

__all__ = ["own_class", "attach_", "chain", "find", "original", "bake", "bake_"]


def own_class(module: nn.Module) -> nn.Module:
    """Give a parametrized ``module`` a class of its own (a no-op for other modules).

    See the module docstring for why: afterwards, attaching or removing parametrizations of
    ``module`` cannot affect a model it was copied from or to.

    Parameters
    ----------
    module
        Any module.

    Returns
    -------
    nn.Module
        ``module`` itself.
    """
    if parametrize.is_parametrized(module):
        cls = module.__class__
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return module


def attach_(module: nn.Module, tensor_name: str, parametrization: nn.Module) -> nn.Module:
    """Parametrize ``module.<tensor_name>`` by ``parametrization``, in place; returns ``module``.

    If the tensor is already parametrized, ``parametrization`` is applied after the existing
    ones (it receives their output).

    Parameters
    ----------
    module
        The layer that owns the tensor.
    tensor_name
        ``"weight"``, ``"bias"``, or any parameter or buffer name of ``module``.
    parametrization
        A module mapping the tensor to a tensor of the same shape.

    Returns
    -------
    nn.Module
        ``module`` itself.

    Raises
    ------
    TypeError
        If ``module`` or ``parametrization`` is not a module.
    ValueError
        If ``module`` has no tensor ``tensor_name``.
    """
    validate.module(module, "module")
    validate.module(parametrization, "parametrization")
    if not isinstance(getattr(module, tensor_name, None), torch.Tensor):
        raise ValueError(f"tensor_name: the {type(module).__name__} has no tensor {tensor_name!r}")
    own_class(module)
    parametrize.register_parametrization(module, tensor_name, parametrization)
    return module


def chain(module: nn.Module, tensor_name: str) -> list[nn.Module]:
    """The parametrizations of ``module.<tensor_name>``, in the order they apply.

    Parameters
    ----------
    module
        Any module.
    tensor_name
        The name of one of its tensors.

    Returns
    -------
    list of nn.Module
        Empty if the tensor is not parametrized.
    """
    if parametrize.is_parametrized(module, tensor_name):
        return list(module.parametrizations[tensor_name])
    return []


def _parametrized(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """``(layer name, layer, tensor name)`` for every parametrized tensor of ``model``."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations):
                yield name, module, tensor_name


def find(model: nn.Module, kind: type | tuple[type, ...] = nn.Module) -> dict[str, nn.Module]:
    """The parametrizations of type ``kind`` attached anywhere in ``model``.

    Parameters
    ----------
    model
        Any module.
    kind
        A parametrization class or tuple of classes (default: every parametrization).

    Returns
    -------
    dict
        ``{"<layer>.<tensor>": parametrization}`` in module order (for example
        ``{"fc1.weight": Mask(...)}``); with several of that kind on one tensor, the last.

    Raises
    ------
    TypeError
        If ``model`` is not a module.
    """
    validate.module(model)
    found = {}
    for name, module, tensor_name in _parametrized(model):
        for p in chain(module, tensor_name):
            if isinstance(p, kind):
                found[f"{name}.{tensor_name}" if name else tensor_name] = p
    return found


def original(module: nn.Module, tensor_name: str) -> torch.Tensor:
    """The unparametrized tensor behind ``module.<tensor_name>``.

    Parameters
    ----------
    module
        Any module.
    tensor_name
        The name of one of its tensors.

    Returns
    -------
    torch.Tensor
        The ``original`` that the chain of parametrizations receives, or the plain tensor if
        there is no chain (the tensor itself, not a copy: changing it changes the module).
    """
    if parametrize.is_parametrized(module, tensor_name):
        return module.parametrizations[tensor_name].original
    return getattr(module, tensor_name)


def bake_(model: nn.Module, kind: type | tuple[type, ...] | None = None) -> nn.Module:
    """Replace parametrized tensors by plain parameters holding their current values, in place.

    Parameters
    ----------
    model
        Any module.
    kind
        Bake only the tensors whose chain holds a parametrization of this type (all of that
        tensor's chain is baked, since its value is the chain's output); None bakes every one.

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    TypeError
        If ``model`` is not a module.
    """
    validate.module(model)
    for _, module, tensor_name in list(_parametrized(model)):
        if kind is None or any(isinstance(p, kind) for p in chain(module, tensor_name)):
            own_class(module)
            with torch.no_grad():
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return model


def bake(model: nn.Module, kind: type | tuple[type, ...] | None = None) -> nn.Module:
    """A copy of ``model`` with its parametrizations baked into plain tensors.

    Parameters
    ----------
    model, kind
        As :func:`bake_`.

    Returns
    -------
    nn.Module
        The new model; ``model`` is left unchanged and keeps working.

    Raises
    ------
    TypeError
        If ``model`` is not a module.
    """
    validate.module(model)
    return bake_(copy.deepcopy(model), kind)
