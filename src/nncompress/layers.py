"""Choosing the layers a technique touches, in any model, and swapping layers for others.

Every technique of the package takes a ``layers`` argument and passes it to :func:`select`,
which accepts

- ``None``: every module of the allowed types (``nn.Linear`` and ``nn.Conv2d`` unless the
  technique says otherwise);
- a qualified name, as in ``model.named_modules()``: ``"fc1"``,
  ``"encoder.layer.3.intermediate.dense"``;
- a glob pattern over qualified names (``fnmatch``; ``*`` also matches dots):
  ``"encoder.layer.*.attention.*"``, ``"fc[12]"``. A pattern picks the matching modules of the
  allowed types and skips the others (a LayerNorm under ``attention`` is not an error);
- a module type, such as ``nn.Linear``: every module of that type;
- a list or tuple of any of these: their union.

The selection is returned in the model's own module order, each layer once, so results do not
depend on how the caller spelled it. :func:`select_values` does the same for a mapping from such
keys to per-layer values (``{"fc*": 0.9, "fc3": 0.5}``: later keys override earlier ones).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from . import validate

__all__ = ["WEIGHTED", "Layers", "select", "select_values", "replace", "replace_", "capture_features", "Coupling",
           "Heads"]

WEIGHTED = (nn.Linear, nn.Conv2d)

Layers = str | type | Iterable[str | type] | None

_GLOB = set("*?[")


@dataclass(frozen=True)
class Coupling:
    """Which layers read the output channels of a layer: the data flow that channel removal needs.

    Parameters
    ----------
    producer
        The qualified name of the layer whose output channels are counted.
    consumers
        The names of the layers that read them; empty when what reads them is not a layer (an
        attention block's query and key rows are read by the attention scores, which need no
        change when whole heads go: see :class:`Heads`).
    repeat
        Consecutive consumer inputs per producer channel (>= 1).

    Output channel ``c`` of ``producer`` (row ``c`` of a Linear weight, filter ``c`` of a Conv2d)
    feeds inputs ``c * repeat`` to ``c * repeat + repeat - 1`` of every layer in ``consumers``
    (columns of a Linear weight, input channels of a Conv2d). ``repeat`` is 1 where the channel
    reaches the consumer as it is, and the number of spatial positions per channel where a
    convolution's output is flattened into a Linear layer (``4 * 4 = 16`` in LeNet-5).
    Architectures declare their couplings as data (``nncompress.models.couplings``); techniques
    never inspect the model to find them.

    Raises
    ------
    TypeError
        If ``producer`` is not a non-empty str or ``consumers`` not a non-empty sequence of them.
    ValueError
        If ``repeat`` < 1.
    """

    producer: str
    consumers: tuple[str, ...]
    repeat: int = 1

    def __post_init__(self):
        if not isinstance(self.producer, str) or not self.producer:
            raise TypeError(f"producer must be a layer name, got {self.producer!r}")
        if isinstance(self.consumers, str) or not isinstance(self.consumers, (tuple, list)) or \
                not all(isinstance(c, str) and c for c in self.consumers):
            raise TypeError(f"consumers must be a tuple of layer names, got {self.consumers!r}")
        object.__setattr__(self, "consumers", tuple(self.consumers))
        validate.integer(self.repeat, "repeat", 1)


@dataclass(frozen=True)
class Heads:
    """Where one attention block's heads live: the rows of its projections and the columns that read them.

    Parameters
    ----------
    query, key, value
        Names of the Linear layers whose output rows ``h * size`` to ``(h + 1) * size - 1`` are
        head ``h``'s.
    output
        The Linear layer that reads the heads' concatenated outputs (its input columns, in the
        same order).
    count
        Heads in the block (>= 1).
    size
        Width of one head (>= 1).

    Raises
    ------
    TypeError
        If a name is not a non-empty str.
    ValueError
        If ``count`` or ``size`` < 1.
    """

    query: str
    key: str
    value: str
    output: str
    count: int
    size: int

    def __post_init__(self):
        for field in ("query", "key", "value", "output"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise TypeError(f"{field} must be a layer name, got {getattr(self, field)!r}")
        validate.integer(self.count, "count", 1)
        validate.integer(self.size, "size", 1)

    def couplings(self) -> list[Coupling]:
        """The couplings that remove dead heads: query and key rows alone, value rows with the output's columns."""
        return [Coupling(self.query, ()), Coupling(self.key, ()), Coupling(self.value, (self.output,))]


def _keys(layers) -> list:
    if layers is None:
        return [None]
    if isinstance(layers, (str, type)):
        return [layers]
    if isinstance(layers, Mapping):
        return list(layers)
    if isinstance(layers, Iterable):
        keys = list(layers)
        if not keys:
            raise ValueError("layers must not be empty; pass None to select every layer")
        return keys
    raise TypeError(f"layers must be None, a layer name, a glob pattern, a module type or a list of "
                    f"these, got {type(layers).__name__}")


def _match(key, modules: dict[str, nn.Module], types: tuple[type, ...]) -> list[str]:
    """Names of the modules that ``key`` selects (see the module docstring)."""
    allowed = [n for n, m in modules.items() if isinstance(m, types)]
    if key is None:
        return allowed
    if isinstance(key, type):
        if not issubclass(key, nn.Module):
            raise TypeError(f"a type in layers must be a subclass of torch.nn.Module, got {key.__name__}")
        found = [n for n in allowed if isinstance(modules[n], key)]
        if not found:
            raise ValueError(f"layers: the model has no {key.__name__} among its {_names(types)} layers")
        return found
    if not isinstance(key, str):
        raise TypeError(f"each entry of layers must be a str (name or glob pattern) or a module type, "
                        f"got {type(key).__name__} {key!r}")
    if key in modules and key:
        if not isinstance(modules[key], types):
            raise TypeError(f"layers: {key!r} is a {type(modules[key]).__name__}; this technique takes "
                            f"{_names(types)} layers")
        return [key]
    if _GLOB & set(key):
        found = [n for n in allowed if n and fnmatch.fnmatchcase(n, key)]
        if found:
            return found
        raise ValueError(f"layers: the pattern {key!r} matches no {_names(types)} layer; the model has "
                         f"{_preview(allowed)}")
    raise ValueError(f"layers: the model has no layer named {key!r}; its {_names(types)} layers are "
                     f"{_preview(allowed)}")


def select(model: nn.Module, layers: Layers = None, types: tuple[type, ...] = WEIGHTED) -> dict[str, nn.Module]:
    """The layers of ``model`` that ``layers`` names, in the model's module order.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``.
    layers
        None (every module of ``types``), a qualified name, a glob pattern, a module type, or a
        list of these; see the module docstring.
    types
        The module types the technique accepts.

    Returns
    -------
    dict
        ``{qualified name: module}``, each selected module once.

    Raises
    ------
    TypeError
        If ``model`` is not a module, ``layers`` is of the wrong kind, or a name given exactly
        denotes a module that is not one of ``types``.
    ValueError
        If a name, pattern or type selects nothing, or ``layers`` is an empty list.
    """
    validate.module(model)
    modules = dict(model.named_modules())
    chosen: set[str] = set()
    for key in _keys(layers):
        chosen.update(_match(key, modules, types))
    if not chosen and layers is None:
        raise ValueError(f"the model has no {_names(types)} layer")
    return {n: m for n, m in modules.items() if n in chosen}


def select_values(model: nn.Module, values: Mapping, types: tuple[type, ...] = WEIGHTED) -> dict:
    """Expand ``{name, pattern or type: value}`` to ``{layer name: value}`` in module order.

    Keys are resolved as by :func:`select`; where two keys select the same layer, the later
    key's value wins.

    Parameters
    ----------
    model
        Any module.
    values
        ``{name, pattern or type: value}``.
    types
        The module types the technique accepts.

    Returns
    -------
    dict
        ``{qualified name: value}``.

    Raises
    ------
    TypeError, ValueError
        As :func:`select`; also TypeError if ``values`` is not a mapping, ValueError if empty.
    """
    validate.mapping(values, "values")
    if not values:
        raise ValueError("the per-layer mapping must not be empty")
    modules = dict(model.named_modules())
    found = {}
    for key, value in values.items():
        for name in _match(key, modules, types):
            found[name] = value
    return {n: found[n] for n in modules if n in found}


def replace_(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Put ``module`` in place of ``model``'s submodule ``name``, in place.

    Parameters
    ----------
    model
        Any module.
    name
        The qualified name of one of its submodules.
    module
        The module to put there (used as it is).

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    ValueError
        If ``model`` has no submodule ``name`` (the empty name, the model itself, included).
    TypeError
        If ``module`` is not a ``torch.nn.Module``.
    """
    validate.module(module, "module")
    if not name or name not in dict(model.named_modules()):
        raise ValueError(f"name must be a submodule of the model, got {name!r}")
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
    return model


def replace(model: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
    """A copy of ``model`` with each named submodule replaced by the given module.

    The replacement modules are used as they are (not copied); the rest of the model is a deep
    copy, so ``model`` itself is left unchanged.

    Parameters
    ----------
    model
        Any module.
    replacements
        ``{qualified submodule name: new module}``.

    Returns
    -------
    nn.Module
        The new model.

    Raises
    ------
    ValueError, TypeError
        As :func:`replace_`.
    """
    import copy

    validate.mapping(replacements, "replacements")
    modules = dict(model.named_modules())
    for name in replacements:
        if not name or name not in modules:
            raise ValueError(f"replacements names {name!r}, which is not a submodule of the model")
    # copy the model without copying the modules that are about to be replaced
    memo = {id(modules[n]): replacements[n] for n in replacements}
    return copy.deepcopy(model, memo)


@contextmanager
def capture_features(model: nn.Module, layers: Sequence[str], kind: str = "output"
                     ) -> Iterator[dict[str, torch.Tensor]]:
    """Record what submodules of ``model`` receive or return, for as long as the block runs.

    Parameters
    ----------
    model
        Any module.
    layers
        Names or glob patterns of submodules of any type (see :func:`select`); an empty
        sequence captures nothing.
    kind
        ``"output"`` or ``"input"`` (the first positional input).

    Yields
    ------
    dict
        Refilled by each forward pass of ``model``: ``features[name]`` is the latest ``kind`` of
        layer ``name`` (patterns are expanded to the names they match). Tensors are kept as
        computed, attached to the autograd graph, so that losses on them train the model. The
        forward hooks are removed when the block exits, also when it raises.

    Raises
    ------
    TypeError
        If ``layers`` is a single str rather than a sequence.
    ValueError
        For a ``kind`` other than ``"input"``/``"output"`` or a layer the model does not have.
    """
    validate.choice(kind, "kind", ("input", "output"))
    if isinstance(layers, str):
        raise TypeError("layers must be a sequence of layer names, not a single str")
    layers = list(layers)
    modules = select(model, layers, types=(nn.Module,)) if layers else {}  # no layers: capture nothing
    features: dict[str, torch.Tensor] = {}

    def record(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            features[name] = inputs[0] if kind == "input" else output
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in modules.items()]
    try:
        yield features
    finally:
        for handle in handles:
            handle.remove()


def _names(types: tuple[type, ...]) -> str:
    return "/".join(t.__name__ for t in types)


def _preview(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"
