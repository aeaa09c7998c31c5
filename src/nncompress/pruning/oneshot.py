"""One-shot pruning with calibration data: Wanda and SparseGPT, unstructured or N:M.

Neither method retrains. Both look at what the layer receives on a few hundred calibration
inputs (:func:`nncompress.calibration.input_statistics`):

- :func:`wanda_mask` (Sun et al., 2024) scores each weight by ``|W_ij| * ||X_j||``, its
  magnitude times the norm of the input feature it multiplies, and removes the lowest scores
  of each output row (or of each group of ``m`` weights in a row, for N:M). Scaling an input
  feature up and its weights down by the same factor leaves the scores, and the mask, unchanged;
  magnitude alone would not be.
- :func:`sparsegpt_prune` (Frantar and Alistarh, 2023) chooses the mask block by block by the
  Optimal Brain Surgeon saliency ``w^2 / [H^-1]_jj`` and, column by column, moves each removed
  weight's contribution onto the columns not yet processed, as GPTQ does with rounding errors
  (:mod:`nncompress.quantization.gptq`).

N:M sparsity keeps ``m - n`` of every ``m`` consecutive weights of a row (2:4 keeps 2 of 4),
the pattern NVIDIA's sparse tensor cores run (Mishra et al., 2021).

References: sun2024simple, frantar2023sparsegpt, mishra2021accelerating, hassibi1993second
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .. import layers as L
from .. import validate
from ..calibration import inverse_hessian_factor, one_thread, layerwise_
from .masks import apply_masks_, key

__all__ = ["nm_mask", "wanda_mask", "sparsegpt_prune", "ONESHOT_METHODS", "prune_oneshot"]

ONESHOT_METHODS = ("magnitude", "wanda", "sparsegpt")


def _check_pattern(sparsity, n, m, columns: int) -> tuple[float, int | None, int | None]:
    if (n is None) != (m is None):
        raise ValueError("give both n and m for N:M sparsity, or neither")
    if n is None:
        return validate.fraction(sparsity, "sparsity"), None, None
    m = validate.integer(m, "m", 2)
    n = validate.integer(n, "n", 1, m - 1)
    if columns % m:
        raise ValueError(f"m must divide the {columns} input columns for N:M sparsity, got {m}")
    return n / m, n, m


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask removing the ``n`` lowest ``scores`` of every ``m`` consecutive entries of each row.

    Parameters
    ----------
    scores
        ``(rows, columns)``, columns a multiple of ``m``.
    n, m
        Remove ``n`` of every ``m`` (``1 <= n < m``).

    Returns
    -------
    torch.Tensor
        bool ``(rows, columns)``, True where kept.

    Raises
    ------
    ValueError
        If ``m`` does not divide the columns or ``n`` is out of range.
    """
    validate.tensor(scores, "scores", dim=2)
    _, n, m = _check_pattern(None, n, m, scores.shape[1])
    groups = scores.reshape(scores.shape[0], -1, m)
    lowest = torch.topk(groups, n, dim=2, largest=False).indices
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(2, lowest, False)
    return keep.reshape(scores.shape)


def _row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the ``round(sparsity * columns)`` lowest scores of each row."""
    k = round(sparsity * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        keep.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    return keep


def wanda_mask(weight: torch.Tensor, norms: torch.Tensor, sparsity: float = 0.5, n: int | None = None,
               m: int | None = None) -> torch.Tensor:
    """Wanda's mask: remove the weights of lowest ``|W_ij| * ||X_j||`` in each output row.

    Parameters
    ----------
    weight
        A ``(rows, columns)`` Linear weight.
    norms
        ``(columns,)``: the L2 norm of each input feature over the calibration rows
        (:attr:`nncompress.calibration.InputStats.norms`).
    sparsity
        Fraction removed from each row, in [0, 1) (ignored for N:M).
    n, m
        N:M sparsity instead: remove ``n`` of every ``m`` consecutive weights of a row.

    Returns
    -------
    torch.Tensor
        bool ``(rows, columns)``, True where kept.

    Raises
    ------
    TypeError, ValueError
        For tensors of the wrong shape, or a sparsity or pattern out of range.

    References
    ----------
    sun2024simple
    """
    validate.tensor(weight, "weight", dim=2, floating=True)
    validate.tensor(norms, "norms", dim=1, floating=True)
    if len(norms) != weight.shape[1]:
        raise ValueError(f"norms must have one entry per input column ({weight.shape[1]}), got {len(norms)}")
    sparsity, n, m = _check_pattern(sparsity, n, m, weight.shape[1])
    scores = weight.detach().abs() * norms.detach()[None, :]
    return nm_mask(scores, n, m) if n is not None else _row_mask(scores, sparsity)


def sparsegpt_prune(weight: torch.Tensor, gram: torch.Tensor, sparsity: float = 0.5, n: int | None = None,
                    m: int | None = None, block_size: int = 128, damp: float = 0.01,
                    mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT: prune by OBS saliency, block by block, and update the remaining weights.

    Within each block of ``block_size`` columns the mask removes the ``sparsity`` fraction of
    lowest saliency ``w_ij^2 / U_jj^2`` (``U`` from :func:`inverse_hessian_factor`), exactly
    ``round(sparsity * rows * block_size)`` weights. For N:M, each group of ``m`` columns
    removes the ``n`` of lowest saliency in each row, chosen when the group's first column is
    reached, from the weights as updated so far (the paper's adaptive mask selection). Then each column's removed weights are set to zero and the
    resulting error is spread over the later columns, ``W[:, k] -= e * U_jk`` with
    ``e = (w_j - p_j) / U_jj``, exactly as :func:`nncompress.quantization.gptq_quantize` does with
    rounding errors.

    Parameters
    ----------
    weight
        A float ``(rows, columns)`` Linear weight.
    gram
        ``sum x x^T`` of the layer's calibration inputs, ``(columns, columns)``.
    sparsity
        Fraction removed, in [0, 1) (ignored for N:M and when ``mask`` is given).
    n, m
        N:M sparsity instead.
    block_size
        Columns per block: the unit of mask selection and of lazy updates (an int >= 1).
    damp
        Dampening of the Hessian, relative to its mean diagonal.
    mask
        A given keep-mask (bool, ``weight``'s shape) instead of choosing one: only the update.

    Returns
    -------
    tuple of torch.Tensor
        The pruned, updated weight (float32) and its keep-mask (bool).

    Raises
    ------
    TypeError, ValueError
        For bad tensors or arguments out of range.

    References
    ----------
    frantar2023sparsegpt
    """
    validate.tensor(weight, "weight", dim=2, floating=True)
    validate.tensor(gram, "gram", dim=2, floating=True)
    rows, columns = weight.shape
    if gram.shape != (columns, columns):
        raise ValueError(f"gram must be ({columns}, {columns}) for a weight with {columns} columns, "
                         f"got {tuple(gram.shape)}")
    sparsity, n, m = _check_pattern(sparsity, n, m, columns)
    block_size = validate.integer(block_size, "block_size", 1)
    if n is not None and block_size % m:
        raise ValueError(f"block_size must be a multiple of m={m} for N:M sparsity, got {block_size}")
    if mask is not None:
        validate.tensor(mask, "mask")
        if mask.shape != weight.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(weight.shape)}")
    u, dead = inverse_hessian_factor(gram, damp)
    w = weight.detach().double().clone()
    w[:, dead] = 0.0
    keep = torch.ones(rows, columns, dtype=torch.bool) if mask is None else mask.clone()
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block, errors = w[:, start:end].clone(), torch.zeros(rows, end - start, dtype=w.dtype)
        ub = u[start:end, start:end]
        if mask is None and n is None:
            saliency = block ** 2 / ub.diagonal()[None, :] ** 2
            chosen, k = torch.ones_like(saliency, dtype=torch.bool), round(sparsity * saliency.numel())
            if k:
                chosen.view(-1)[torch.topk(saliency.flatten(), k, largest=False).indices] = False
            keep[:, start:end] = chosen
        kb = keep[:, start:end]
        with one_thread():
            for i in range(end - start):
                if mask is None and n is not None and i % m == 0:  # each group when reached, from the updated weights
                    kb[:, i:i + m] = nm_mask(block[:, i:i + m] ** 2 / ub.diagonal()[None, i:i + m] ** 2, n, m)
                pruned = torch.where(kb[:, i], block[:, i], torch.zeros_like(block[:, i]))
                error = (block[:, i] - pruned) / ub[i, i]
                block[:, i:] -= error[:, None] * ub[i, i:][None, :]
                block[:, i] = pruned
                errors[:, i] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
    return w.float(), keep


def prune_oneshot(model: nn.Module, batches: Sequence, method: str = "wanda", sparsity: float = 0.5,
                  n: int | None = None, m: int | None = None, layers: L.Layers = None,
                  groups: Sequence[Sequence[str]] | None = None) -> nn.Module:
    """A copy of ``model`` pruned one shot, layer by layer, from calibration inputs.

    ``"magnitude"`` removes the smallest weights of each output row (no data needed: it runs no
    calibration pass and ignores ``batches`` and ``groups``);
    ``"wanda"`` uses :func:`wanda_mask`; ``"sparsegpt"`` uses :func:`sparsegpt_prune`, which also
    updates the kept weights. Each layer gets a mask (:class:`nncompress.pruning.Mask`), so the
    pruned weights stay zero; the walk is :func:`nncompress.calibration.layerwise_`.

    Parameters
    ----------
    model
        Any module (left untouched).
    batches
        Calibration inputs, one forward pass each.
    method
        One of :data:`ONESHOT_METHODS`.
    sparsity
        Fraction removed from each layer (per output row for magnitude and Wanda).
    n, m
        N:M sparsity instead.
    layers
        A selection of Linear layers; all of them when None.
    groups
        Sequential processing, as :func:`nncompress.calibration.layerwise_`.

    Returns
    -------
    nn.Module
        The pruned copy.

    References
    ----------
    sun2024simple, frantar2023sparsegpt, han2015learning
    """
    validate.choice(method, "method", ONESHOT_METHODS)
    out = copy.deepcopy(model)

    def transform(name: str, layer: nn.Linear, stats) -> None:
        weight = layer.weight.detach()
        if method == "sparsegpt":
            new, keep = sparsegpt_prune(weight, stats.gram, sparsity, n, m)
            with torch.no_grad():
                layer.weight.copy_(new)
        else:
            norms = stats.norms if method == "wanda" else torch.ones(weight.shape[1])
            keep = wanda_mask(weight, norms, sparsity, n, m)
        apply_masks_(out, {key(name, "weight"): keep.float()})

    if method == "magnitude":  # needs no data: no calibration pass
        for name, layer in L.select(out, layers, types=(nn.Linear,)).items():
            transform(name, layer, None)
        return out
    return layerwise_(out, batches, layers, transform, groups)
