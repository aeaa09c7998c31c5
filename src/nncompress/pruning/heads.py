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

References: michel2019sixteen, voita2019analyzing
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

__all__ = ["head_importance", "head_masks", "remove_heads"]


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
    validate.module(model)
    modules = _check_heads(model, heads)
    gates = [torch.ones(h.count, dtype=torch.float32, requires_grad=True) for h in heads]

    def gate(h: L.Heads, g: torch.Tensor):
        def hook(module, args):
            x = args[0]
            return (x * g.repeat_interleave(h.size).to(x.dtype),) + tuple(args[1:])
        return hook

    handles = [modules[h.output].register_forward_pre_hook(gate(h, g)) for h, g in zip(heads, gates)]
    total = [torch.zeros(h.count, dtype=torch.float64) for h in heads]
    saved = {name: p.grad for name, p in model.named_parameters()}
    training, count = model.training, 0
    model.eval()
    try:
        for batch in batches:
            value = loss(model, batch)
            grads = torch.autograd.grad(value, gates, allow_unused=True)
            for t, g in zip(total, grads):
                if g is not None:
                    t += g.detach().abs().double()
            count += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
        for name, p in model.named_parameters():
            p.grad = saved[name]
    if count == 0:
        raise ValueError("batches must hold at least one batch")
    scores = [t / count for t in total]
    if normalize:
        scores = [s / s.norm().clamp(min=1e-20) for s in scores]
    out = torch.full((len(heads), max(h.count for h in heads)), float("nan"), dtype=torch.float64)
    for i, s in enumerate(scores):
        out[i, :len(s)] = s
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
