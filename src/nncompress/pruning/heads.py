"""Attention heads: how much each matters, and removing whole heads physically.

:func:`head_importance` is Michel et al.'s score: put a gate ``xi_h = 1`` on every head's output,
and average ``|dL/dxi_h|`` over data, the first-order estimate of how much the loss would change
if the head were switched off. The gates are forward pre-hooks on each attention block's output
projection that scale its input columns head by head; they change nothing while they equal 1.
:func:`head_masks` zeroes a head's rows of the query, key and value projections, and
:func:`remove_heads` deletes them, together with the output projection's columns that read the
head, through :func:`nncompress.pruning.remove_channels` and the couplings that
:class:`nncompress.layers.Heads` declares. Where the heads are is architecture data
(:func:`nncompress.models.bert_heads`), never found by inspecting the model.

References: michel2019sixteen, voita2019analyzing, molchanov2017pruning
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .. import layers as L
from .. import validate
from .channels import remove_channels
from .masks import apply_masks_, key

__all__ = ["gate_importance", "head_importance", "head_masks", "remove_heads"]


def _check_heads(model: nn.Module, heads) -> dict[str, nn.Module]:
    if isinstance(heads, L.Heads) or not isinstance(heads, Sequence) or not all(isinstance(h, L.Heads) for h in heads):
        raise TypeError("heads must be a sequence of nncompress.layers.Heads")
    modules = dict(model.named_modules())
    for h in heads:
        for name in (h.query, h.key, h.value, h.output):
            if not isinstance(modules.get(name), nn.Linear):
                raise ValueError(f"heads name {name!r}, which is not a Linear layer of the model")
        if modules[h.query].out_features != h.count * h.size or modules[h.output].in_features != h.count * h.size:
            raise ValueError(f"{h.query!r}: {h.count} heads of size {h.size} do not match the layers' shapes")
    return modules


def gate_importance(model: nn.Module, gates: Mapping[str, int], loss: Callable[[nn.Module, object], torch.Tensor],
                    batches: Iterable) -> dict[str, torch.Tensor]:
    """The mean ``|dL / d gate|`` of gates on groups of input columns of Linear layers.

    A gate ``xi_g = 1`` multiplies each group of ``size`` consecutive input columns of a layer
    (a head's outputs for an attention block's output projection; one neuron for a feed-forward
    block's second matrix). Its gradient is the first-order change of the loss if the group were
    switched off, the importance of Michel et al. for heads and Molchanov et al.'s Taylor
    criterion for neurons.

    Parameters
    ----------
    model
        Any module (its weights and their gradients are left as they were).
    gates
        Linear layer name mapped to the group size (which must divide its input columns).
    loss
        ``loss(model, batch)``: a scalar loss on one batch.
    batches
        The data, one batch at a time (at least one).

    Returns
    -------
    dict
        Layer name mapped to float64 ``(groups,)`` scores.

    Raises
    ------
    ValueError
        For a layer that is not a Linear of the model, a size that does not divide its inputs, or
        no data.

    References
    ----------
    michel2019sixteen, molchanov2017pruning
    """
    validate.module(model)
    validate.mapping(gates, "gates")
    modules = dict(model.named_modules())
    values = {}
    for name, size in gates.items():
        if not isinstance(modules.get(name), nn.Linear):
            raise ValueError(f"gates name {name!r}, which is not a Linear layer of the model")
        size = validate.integer(size, f"gates[{name!r}]", 1)
        if modules[name].in_features % size:
            raise ValueError(f"gates[{name!r}] = {size} does not divide its {modules[name].in_features} inputs")
        values[name] = torch.ones(modules[name].in_features // size, requires_grad=True)

    def hook(name: str):
        size = gates[name]
        return lambda module, args: (args[0] * values[name].repeat_interleave(size).to(args[0].dtype),) + tuple(args[1:])

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in gates]
    total = {name: torch.zeros(len(v), dtype=torch.float64) for name, v in values.items()}
    saved = {name: p.grad for name, p in model.named_parameters()}
    training, count = model.training, 0
    model.eval()
    try:
        for batch in batches:
            grads = torch.autograd.grad(loss(model, batch), list(values.values()), allow_unused=True)
            for name, g in zip(values, grads):
                if g is not None:
                    total[name] += g.detach().abs().double()
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
        for name, p in model.named_parameters():
            p.grad = saved[name]
    if count == 0:
        raise ValueError("batches must hold at least one batch")
    return {name: t / count for name, t in total.items()}


def head_importance(model: nn.Module, heads: Sequence[L.Heads], loss: Callable[[nn.Module, object], torch.Tensor],
                    batches: Iterable, normalize: bool = True) -> torch.Tensor:
    """Michel et al.'s head importance: the mean ``|dL / d gate|`` of a gate on each head's output.

    Parameters
    ----------
    model
        Any module (its weights are not changed; their gradients are left as they were).
    heads
        Where the heads are, one :class:`nncompress.layers.Heads` per attention block.
    loss
        ``loss(model, batch)``: a scalar loss on one batch.
    batches
        The data, one batch at a time (at least one).
    normalize
        Divide each block's scores by their L2 norm, as the paper does before comparing heads
        across layers.

    Returns
    -------
    torch.Tensor
        float64 ``(blocks, heads)``; blocks with fewer heads than the most are padded with NaN.

    Raises
    ------
    TypeError, ValueError
        For a bad model, heads declaration or empty data.

    References
    ----------
    michel2019sixteen
    """
    _check_heads(model, heads)
    scores = gate_importance(model, {h.output: h.size for h in heads}, loss, batches)
    out = torch.full((len(heads), max(h.count for h in heads)), float("nan"), dtype=torch.float64)
    for i, h in enumerate(heads):
        s = scores[h.output]
        out[i, :len(s)] = s / s.norm().clamp(min=1e-20) if normalize else s
    return out


def head_masks(model: nn.Module, heads: Sequence[L.Heads], remove: Mapping[int, Sequence[int]]
               ) -> dict[str, torch.Tensor]:
    """Masks that zero the query, key and value rows (weights and biases) of the heads to remove.

    Parameters
    ----------
    model
        The model (for the layers' shapes).
    heads
        Where the heads are.
    remove
        Block index (into ``heads``) mapped to the head indices to remove from it; every block
        keeps at least one head.

    Returns
    -------
    dict
        Mask keys (:func:`nncompress.pruning.key`) mapped to float masks, for
        :func:`nncompress.pruning.apply_masks`.

    Raises
    ------
    ValueError
        For a block or head index out of range, or a block that would lose all its heads.
    """
    modules = _check_heads(model, heads)
    validate.mapping(remove, "remove")
    masks = {}
    for block, dropped in remove.items():
        block = validate.integer(block, "block", 0, len(heads) - 1)
        h = heads[block]
        dropped = sorted({validate.integer(i, "head", 0, h.count - 1) for i in dropped})
        if len(dropped) == h.count:
            raise ValueError(f"remove: block {block} would lose all {h.count} heads; keep at least one")
        rows = torch.ones(h.count * h.size)
        for i in dropped:
            rows[i * h.size:(i + 1) * h.size] = 0.0
        for name in (h.query, h.key, h.value):
            masks[key(name, "weight")] = rows[:, None].expand_as(modules[name].weight).clone()
            if modules[name].bias is not None:
                masks[key(name, "bias")] = rows.clone()
    return masks


def remove_heads(model: nn.Module, heads: Sequence[L.Heads], remove: Mapping[int, Sequence[int]]) -> nn.Module:
    """A smaller copy of ``model`` without the given heads, their rows and columns deleted.

    Parameters
    ----------
    model
        Any module (left untouched) whose attention blocks read their heads with a free head
        count (reshaping to ``(..., -1, size)``), as Hugging Face's BERT does.
    heads
        Where the heads are (:func:`nncompress.models.bert_heads`).
    remove
        Block index mapped to head indices, as :func:`head_masks`.

    Returns
    -------
    nn.Module
        The smaller model: every other head computes exactly what it did.

    References
    ----------
    michel2019sixteen
    """
    pruned = apply_masks_(copy.deepcopy(model), head_masks(model, heads, remove))
    touched = [h for i, h in enumerate(heads) if i in remove and remove[i]]
    if not touched:
        return pruned
    return remove_channels(pruned, [c for h in touched for c in h.couplings()])
