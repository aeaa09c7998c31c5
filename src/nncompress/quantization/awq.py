"""AWQ: activation-aware weight quantization, by scaling the weights' salient input channels up.

Lin et al. (2024) observe that a few input channels matter much more than the rest: those that
carry large activations. Rounding errors on their weights are multiplied by large inputs. Since
``W x = (W diag(s)) (x / s)`` exactly, multiplying column ``j`` of the weight by ``s_j > 1``
before rounding (and dividing input ``j`` by it) shrinks that column's relative rounding error,
as long as the group's scale does not grow much. AWQ chooses ``s = m^alpha``, ``m_j`` the typical
magnitude of input ``j``, with ``alpha`` in [0, 1] found by a grid search that minimizes the
layer's output error on calibration data; no weight is updated otherwise, so, unlike GPTQ,
nothing can overfit the calibration set.

Here the output error of a candidate is computed exactly from the Gram matrix of the calibration
inputs: with ``D = W - Q(W diag(s)) diag(1/s)``, ``||W X - Q(W diag(s)) (X / s)||^2 = tr(D G D^T)``.
``m_j`` is the root mean square of input ``j`` (AWQ uses the mean absolute value; both rank
channels by the same kind of size). Layers that read the same input (a transformer's query, key
and value projections) share one scale, as folding it into the preceding normalization requires.

References: lin2024awq
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .. import layers as L
from .. import validate
from ..calibration import input_statistics
from .gptq import _check, rtn_quantize
from .smooth import SmoothedLinear

__all__ = ["awq_scales", "awq_quantize_weights"]


def _output_error(weights: Sequence[torch.Tensor], quantized: Sequence[torch.Tensor], gram: torch.Tensor) -> float:
    return sum(float(torch.einsum("ij,jk,ik->", d, gram, d)) for d in ((w - q).double() for w, q in zip(weights, quantized)))


def awq_scales(weights: Sequence[torch.Tensor], gram: torch.Tensor, rows: int, bits: int = 4,
               group_size: int | None = None, grid: int = 20) -> tuple[torch.Tensor, float, list[float]]:
    """AWQ's per-input-channel scales for the weights that read one input: the best of a grid of ``alpha``.

    Parameters
    ----------
    weights
        One or more float ``(rows_i, columns)`` weights that read the same input.
    gram
        ``sum x x^T`` of that input over the calibration tokens, ``(columns, columns)``.
    rows
        How many tokens ``gram`` sums (for the inputs' root mean squares).
    bits, group_size
        The round-to-nearest grid, as :func:`rtn_quantize` (asymmetric).
    grid
        ``alpha`` is searched in ``0, 1/grid, ..., (grid - 1)/grid`` (AWQ's 20 points).

    Returns
    -------
    tuple
        ``(scales, alpha, errors)``: float32 ``(columns,)`` scales (all ones at ``alpha = 0``,
        which is plain round-to-nearest), the chosen ``alpha``, and the output error
        ``sum ||W X - Q X||^2`` at each grid point.

    References
    ----------
    lin2024awq
    """
    if isinstance(weights, torch.Tensor) or not weights:
        raise TypeError("weights must be a non-empty sequence of 2-D weights")
    columns = weights[0].shape[1] if weights[0].dim() == 2 else -1
    checked = [_check(w, bits, group_size)[0].float() for w in weights]
    if any(w.shape[1] != columns for w in checked):
        raise ValueError("every weight in weights must have the same number of input columns")
    validate.tensor(gram, "gram", dim=2, floating=True)
    if gram.shape != (columns, columns):
        raise ValueError(f"gram must be ({columns}, {columns}), got {tuple(gram.shape)}")
    rows, grid = validate.integer(rows, "rows", 1), validate.integer(grid, "grid", 1)
    gram = gram.double()
    magnitude = (gram.diagonal().clamp_min(0) / rows).sqrt().float().clamp_min(1e-4)
    best, errors = None, []
    for step in range(grid):
        alpha = step / grid
        scales = magnitude.pow(alpha)
        scales = scales / (scales.max() * scales.min()).sqrt()  # centred on 1, as AWQ normalizes them
        quantized = [rtn_quantize(w * scales, bits, group_size) / scales for w in checked]
        errors.append(_output_error(checked, quantized, gram))
        if best is None or errors[-1] < best[2]:
            best = (scales, alpha, errors[-1])
    return best[0], best[1], errors


def awq_quantize_weights(model: nn.Module, batches: Sequence, bits: int = 4, group_size: int | None = None,
                         groups: Sequence[Sequence[str]] | None = None, grid: int = 20) -> nn.Module:
    """A copy of ``model`` whose selected Linear layers are AWQ-scaled and quantized, weight-only.

    Each layer becomes a :class:`SmoothedLinear`: its inner Linear holds the dequantized
    ``Q(W diag(s))`` (with its grid as ``weight_grid``, so :func:`weight_only_state` stores it)
    and the input is divided by ``s`` (in a deployed model, folded into the operation before).
    Statistics come from one pass of the float model over ``batches``.

    Parameters
    ----------
    model
        Any module (left untouched).
    batches
        Calibration inputs, one forward pass each.
    bits, group_size
        The grid.
    groups
        Layer names that read the same input and share a scale, e.g. ``[["blocks.0.attn.q",
        "blocks.0.attn.k", "blocks.0.attn.v"], ["blocks.0.attn.proj"], ...]``; every Linear layer
        alone when None.
    grid
        As :func:`awq_scales`.

    Returns
    -------
    nn.Module
        The quantized copy; each replaced layer records its ``alpha`` as ``layer.awq_alpha``.

    References
    ----------
    lin2024awq
    """
    validate.module(model)
    groups = [[name] for name in L.select(model, None, types=(nn.Linear,))] if groups is None else \
        [list(g) for g in groups]
    names = [name for g in groups for name in g]
    chosen = L.select(model, names, types=(nn.Linear,))
    if len(set(names)) != len(names):
        raise ValueError("groups must name each layer once")
    stats = input_statistics(model, batches, names)
    replacements = {}
    for group in groups:
        gram = stats[group[0]].gram
        scales, alpha, _ = awq_scales([chosen[n].weight for n in group], gram, stats[group[0]].rows, bits, group_size,
                                      grid)
        for name in group:
            inner = copy.deepcopy(chosen[name])
            weight, inner.weight_grid = rtn_quantize(inner.weight.detach() * scales, bits, group_size, return_grid=True)
            with torch.no_grad():
                inner.weight.copy_(weight)
            replacements[name] = SmoothedLinear(inner, scales)
            replacements[name].awq_alpha = alpha
    return L.replace(model, replacements)
