"""Structured pruning: mask whole output channels, then delete them physically.

:func:`prune_channels` masks the filters (Conv2d) or units (Linear) of smallest L_n norm, bias
included, so that a pruned channel outputs exactly zero. :func:`remove_channels` then deletes
every dead channel and the inputs it fed in the layers that read it, following the couplings
declared for the architecture (:class:`nncompress.layers.Coupling`), and returns a smaller dense
model computing the same function.

References: li2017pruning, he2018soft
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .. import layers as L
from .. import models, validate
from .criteria import check_norm, ln_structured_mask
from .masks import apply_masks_, key

__all__ = ["prune_channels", "prune_channels_", "remove_channels", "remove_lowest_channels"]


def _channel_masks(model: nn.Module, sparsity, n: float, layers) -> dict[str, torch.Tensor]:
    """The weight and bias masks that :func:`prune_channels_` attaches."""
    n = check_norm(n)
    if isinstance(sparsity, Mapping):
        if layers is not None:
            raise ValueError("pass either layers or a per-layer sparsity mapping, not both")
        per_layer = {name: validate.fraction(s, f"sparsity[{name!r}]")
                     for name, s in L.select_values(model, sparsity).items()}
    else:
        chosen = list(L.select(model, layers))
        if layers is None:
            chosen = chosen[:-1]  # the last layer's outputs are the model's outputs (the classes)
        per_layer = dict.fromkeys(chosen, validate.fraction(sparsity, "sparsity"))
    masks = {}
    for name, s in per_layer.items():
        module = model.get_submodule(name)
        weight_mask = ln_structured_mask(module.weight, s, n, dim=0)
        masks[key(name, "weight")] = weight_mask
        if module.bias is not None:
            masks[key(name, "bias")] = weight_mask.flatten(1)[:, 0].clone()  # (out,)
    return masks


def prune_channels_(model: nn.Module, sparsity: float | Mapping, n: float = 2,
                    layers: L.Layers = None) -> nn.Module:
    """Mask whole output channels (filters of a Conv2d, units of a Linear) of smallest L_n norm, in place.

    The bias of a pruned channel is masked too, so the channel outputs exactly zero and
    :func:`remove_channels` can delete it without changing the model's function.

    Parameters
    ----------
    model
        Any module.
    sparsity
        The fraction of each layer's output channels to remove, in [0, 1); or a mapping from layer
        names, glob patterns or types to fractions, which then also chooses the layers.
    n
        The order of the norm ranking the channels: a positive number or ``math.inf``.
    layers
        The layers to prune (see :func:`nncompress.layers.select`). None: every Linear and Conv2d
        except the last one in module order, whose outputs are the model's (the classes).

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    TypeError
        For a non-module ``model``, a non-numeric ``sparsity`` or ``n``, or a selected layer of
        another type.
    ValueError
        For a sparsity outside [0, 1), ``n <= 0``, an unknown layer, or a mapping together with
        ``layers``.

    References
    ----------
    li2017pruning, he2018soft
    """
    validate.module(model)
    return apply_masks_(model, _channel_masks(model, sparsity, n, layers))


def prune_channels(model: nn.Module, sparsity: float | Mapping, n: float = 2,
                   layers: L.Layers = None) -> nn.Module:
    """A copy of ``model`` with channels pruned (see :func:`prune_channels_`); ``model`` is left unchanged.

    Parameters
    ----------
    model, sparsity, n, layers
        As :func:`prune_channels_`.

    Returns
    -------
    nn.Module
        The new, masked model.

    Raises
    ------
    TypeError, ValueError
        As :func:`prune_channels_`.

    References
    ----------
    li2017pruning, he2018soft
    """
    validate.module(model)
    return prune_channels_(copy.deepcopy(model), sparsity, n, layers)


def _check_couplings(model: nn.Module, couplings) -> dict[str, nn.Module]:
    """The layers ``couplings`` names, after checking that the couplings fit ``model``."""
    if isinstance(couplings, (str, L.Coupling)) or not isinstance(couplings, Sequence) or \
            not all(isinstance(c, L.Coupling) for c in couplings):
        raise TypeError(f"couplings must be a list of nncompress.layers.Coupling, got {couplings!r}")
    if not couplings:
        raise ValueError("couplings must hold at least one Coupling")
    modules = dict(model.named_modules())
    named = [c.producer for c in couplings] + [name for c in couplings for name in c.consumers]
    for name in named:
        if name not in modules or not name:
            raise ValueError(f"couplings name {name!r}, which is not a layer of the model")
        if not isinstance(modules[name], L.WEIGHTED):
            raise TypeError(f"couplings: {name!r} is a {type(modules[name]).__name__}; channels are removed "
                            f"from Linear and Conv2d layers only")
        if getattr(modules[name], "groups", 1) != 1:
            raise ValueError(f"couplings: {name!r} is a grouped convolution, which remove_channels does not support")
    for role, names in (("producer", [c.producer for c in couplings]),
                        ("consumer", [name for c in couplings for name in c.consumers])):
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"couplings: {repeated} appear as {role} in more than one coupling")
    for c in couplings:
        out = modules[c.producer].weight.shape[0]
        for name in c.consumers:
            if modules[name].weight.shape[1] != out * c.repeat:
                raise ValueError(f"couplings: {c.producer!r} has {out} output channels, so {name!r} should have "
                                 f"{out} x repeat {c.repeat} = {out * c.repeat} inputs; it has "
                                 f"{modules[name].weight.shape[1]}")
    return {name: modules[name] for name in dict.fromkeys(named)}


def _alive(module: nn.Module) -> torch.Tensor:
    """Indices of the output channels whose effective weight slice or bias is non-zero (at least one)."""
    alive = module.weight.detach().flatten(1).ne(0).any(1)  # (out,)
    if module.bias is not None:
        alive |= module.bias.detach().ne(0)
    if not alive.any():
        alive[0] = True  # keep one (all-zero) channel, so that every layer keeps a valid shape
    return alive.nonzero().flatten()


def _smaller(module: nn.Module, rows: torch.Tensor, cols: torch.Tensor) -> nn.Module:
    """A plain Linear or Conv2d holding ``module``'s effective weight[rows][:, cols] and bias[rows]."""
    weight = module.weight.detach()[rows][:, cols]  # (kept out, kept in, ...)
    bias = None if module.bias is None else module.bias.detach()[rows]
    if isinstance(module, nn.Linear):
        new = nn.Linear(len(cols), len(rows), bias=bias is not None, device=weight.device, dtype=weight.dtype)
    else:
        new = nn.Conv2d(len(cols), len(rows), module.kernel_size, module.stride, module.padding, module.dilation,
                        bias=bias is not None, padding_mode=module.padding_mode, device=weight.device,
                        dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new.train(module.training)


def remove_channels(model: nn.Module, couplings: Sequence[L.Coupling] | None = None) -> nn.Module:
    """A smaller dense copy of ``model`` without its dead channels, computing the same function.

    An output channel of a coupling's producer is dead when its effective weight slice and bias
    are all zero (as after :func:`prune_channels`). It is deleted, together with the ``repeat``
    inputs it feeds in each of the coupling's consumers. A layer that is only a consumer keeps all
    its outputs (the last layer's classes, for example), and every producer keeps at least one
    channel. Each layer a coupling names is replaced by a new ``nn.Linear`` or ``nn.Conv2d`` of the
    reduced size (same kernel, stride, padding, dilation), holding its effective weights: masks
    and other parametrizations of those layers are baked in. Other layers are copied as they are.

    The function is unchanged exactly when a dead channel's zero output reaches the consumers as
    zero, through nonlinearities with ``f(0) = 0`` (ReLU, GELU, max-pooling, flattening); this is
    what a coupling declares.

    Parameters
    ----------
    model
        Any module.
    couplings
        A list of :class:`nncompress.layers.Coupling`; None: those that
        :func:`nncompress.models.couplings` declares for the book's networks.

    Returns
    -------
    nn.Module
        The new model; ``model`` is left unchanged.

    Raises
    ------
    TypeError
        If ``model`` is not a module, ``couplings`` is not a list of couplings, a named layer is
        not a Linear or Conv2d, or ``couplings`` is None for a model without declared couplings.
    ValueError
        If ``couplings`` is empty, a coupling names a layer the model does not have or a grouped convolution, a layer is
        producer (or consumer) in two couplings, or a consumer's input size is not its producer's
        output channels times ``repeat``.

    References
    ----------
    li2017pruning
    """
    validate.module(model)
    if couplings is None:
        couplings = models.couplings(model)
    chosen = _check_couplings(model, couplings)
    rows = {name: torch.arange(m.weight.shape[0]) for name, m in chosen.items()}
    cols = {name: torch.arange(m.weight.shape[1]) for name, m in chosen.items()}
    for c in couplings:
        rows[c.producer] = _alive(chosen[c.producer])
        inputs = (rows[c.producer][:, None] * c.repeat + torch.arange(c.repeat)).flatten()  # (kept * repeat,)
        for name in c.consumers:
            cols[name] = inputs
    return L.replace(model, {name: _smaller(m, rows[name], cols[name]) for name, m in chosen.items()})


def remove_lowest_channels(model: nn.Module, couplings: Sequence[L.Coupling], scores: Mapping[str, torch.Tensor],
                           fraction: float) -> nn.Module:
    """A smaller copy of ``model`` without the lowest-scoring ``fraction`` of each coupling's channels.

    For each coupling, the ``round(fraction * channels)`` output channels of its producer with
    the lowest ``scores[producer]`` are masked (weight rows and bias) and then deleted with the
    inputs they feed (:func:`remove_channels`): for example the intermediate neurons of every
    feed-forward block of a transformer, scored by a gate's gradient
    (:func:`nncompress.pruning.gate_importance`).

    Parameters
    ----------
    model
        Any module; left unchanged.
    couplings
        The couplings whose producers lose channels (:class:`nncompress.layers.Coupling`).
    scores
        Each coupling's producer name mapped to one score per output channel (higher: more important).
    fraction
        The share of each producer's channels removed, in [0, 1).

    Returns
    -------
    nn.Module
        The smaller model.

    Raises
    ------
    TypeError, ValueError
        For a producer without scores, scores of the wrong length, or a fraction out of range.
    """
    fraction = validate.fraction(fraction, "fraction")
    modules = _check_couplings(model, couplings)
    masks = {}
    for coupling in couplings:
        producer = modules[coupling.producer]
        if coupling.producer not in scores:
            raise ValueError(f"scores has no entry for producer {coupling.producer!r}")
        score = validate.tensor(scores[coupling.producer], f"scores[{coupling.producer!r}]", dim=1)
        channels = producer.weight.shape[0]
        if len(score) != channels:
            raise ValueError(f"scores[{coupling.producer!r}] must hold {channels} values, got {len(score)}")
        keep = torch.ones(channels)
        keep[score.argsort()[:round(fraction * channels)]] = 0
        masks[key(coupling.producer, "weight")] = keep.view(-1, *[1] * (producer.weight.dim() - 1)).expand_as(producer.weight).clone()
        if producer.bias is not None:
            masks[key(coupling.producer, "bias")] = keep
    return remove_channels(apply_masks_(copy.deepcopy(model), masks), couplings)
