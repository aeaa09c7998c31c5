"""Weight-only quantization in groups: round-to-nearest, and GPTQ's error compensation.

A weight-only quantizer stores each output row of a Linear weight in ``bits``-bit codes, with
one scale and zero point per group of ``group_size`` consecutive input columns (per row when
``group_size`` is None). :func:`rtn_quantize` rounds every weight to its nearest level.
:func:`gptq_quantize` (Frantar et al., 2023) quantizes the columns one after another and, after
each, moves the rounding error it made onto the columns not yet quantized, in the proportion
that minimizes the layer's output error on the calibration data, ``||W X - Q X||^2``: the
Optimal Brain Surgeon update (Hassibi and Stork, 1993; Frantar et al., 2022) restricted to a
fixed column order, so that one Cholesky factor of the inverse Hessian serves every row.
Columns are processed in blocks, the updates to later blocks applied once per block (the
paper's "lazy batch" updates): the same arithmetic, fewer passes over memory.

Both return the dequantized weight (float, on the quantization grid). The grid is
:func:`group_qparams` of the weight they were given, or, for GPTQ with groups, of each group's
columns as updated when its first column is reached (so the result does not depend on the
block size; the reference implementation computes the same when groups start at block starts).

References: frantar2023optq, frantar2022optimal, hassibi1993second
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from .. import layers as L
from .. import validate
from ..calibration import inverse_hessian_factor, layerwise_
from .affine import fake_quantize, qparams

__all__ = ["group_qparams", "rtn_quantize", "gptq_quantize", "WEIGHT_METHODS", "quantize_weights"]

WEIGHT_METHODS = ("rtn", "gptq")


def _check(weight, bits, group_size) -> tuple[torch.Tensor, int, int]:
    validate.tensor(weight, "weight", dim=2, floating=True)
    bits = validate.bits(bits)
    columns = weight.shape[1]
    group_size = columns if group_size is None else validate.integer(group_size, "group_size", 1, columns)
    if columns % group_size:
        raise ValueError(f"group_size must divide the {columns} input columns, got {group_size}")
    return weight.detach(), bits, group_size


def group_qparams(weight: torch.Tensor, bits: int, symmetric: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, zero_point)`` covering each row's min-max range (widened to include 0).

    Parameters
    ----------
    weight
        ``(rows, columns)``: one group of columns.
    bits
        Bit width.
    symmetric
        Symmetric range (signed codes) instead of asymmetric.

    Returns
    -------
    tuple of torch.Tensor
        ``scale`` and ``zero_point``, each ``(rows,)``.
    """
    return qparams(weight.amin(1), weight.amax(1), bits, symmetric)


def _quantize_column(w: torch.Tensor, scale, zero_point, bits: int, symmetric: bool) -> torch.Tensor:
    return fake_quantize(w, scale, zero_point, bits, signed=symmetric, axis=0)


def rtn_quantize(weight: torch.Tensor, bits: int = 4, group_size: int | None = None,
                 symmetric: bool = False) -> torch.Tensor:
    """Round every weight to the nearest level of its row's (or group's) grid.

    Parameters
    ----------
    weight
        A float ``(rows, columns)`` weight.
    bits
        Bit width, in [1, 16].
    group_size
        Input columns per scale (must divide the columns); one scale per row when None.
    symmetric
        Symmetric grids around zero.

    Returns
    -------
    torch.Tensor
        The dequantized weight, float32, shaped like ``weight``.

    Raises
    ------
    TypeError, ValueError
        For a weight that is not a 2-D float tensor, or bits or group_size out of range.

    References
    ----------
    frantar2023optq
    """
    weight, bits, group_size = _check(weight, bits, group_size)
    out = torch.empty_like(weight, dtype=torch.float32)
    for start in range(0, weight.shape[1], group_size):
        group = weight[:, start:start + group_size].float()
        scale, zero = group_qparams(group, bits, symmetric)
        out[:, start:start + group_size] = fake_quantize(group, scale, zero, bits, signed=symmetric, axis=0)
    return out


def gptq_quantize(weight: torch.Tensor, gram: torch.Tensor, bits: int = 4, group_size: int | None = None,
                  symmetric: bool = False, block_size: int = 128, damp: float = 0.01) -> torch.Tensor:
    """GPTQ: quantize the columns in order, compensating each one's error on the later columns.

    For column ``j`` with inverse-Hessian factor row ``u = U[j]`` (:func:`inverse_hessian_factor`),
    the rounding error ``e = (w_j - q_j) / u_j`` is subtracted from the later columns as
    ``W[:, k] -= e * u_k``: the change that keeps the layer's output on the calibration data
    closest to the original, given that columns before ``j`` are fixed.

    Parameters
    ----------
    weight
        A float ``(rows, columns)`` Linear weight.
    gram
        ``sum x x^T`` of the layer's calibration inputs, ``(columns, columns)``
        (:func:`nncompress.calibration.input_statistics`).
    bits, group_size, symmetric
        The grid, as in :func:`rtn_quantize`.
    block_size
        Columns per lazy-batch block (an int >= 1; the result does not depend on it, up to
        floating-point rounding).
    damp
        Dampening of the Hessian, relative to its mean diagonal.

    Returns
    -------
    torch.Tensor
        The dequantized weight, float32. Columns the data never excites are zero.

    Raises
    ------
    TypeError, ValueError
        For a bad weight or gram, or an argument out of range.

    References
    ----------
    frantar2023optq
    """
    weight, bits, group_size = _check(weight, bits, group_size)
    validate.tensor(gram, "gram", dim=2, floating=True)
    columns = weight.shape[1]
    if gram.shape != (columns, columns):
        raise ValueError(f"gram must be ({columns}, {columns}) for a weight with {columns} columns, "
                         f"got {tuple(gram.shape)}")
    block_size = validate.integer(block_size, "block_size", 1)
    u, dead = inverse_hessian_factor(gram, damp)
    w = weight.double().clone()
    w[:, dead] = 0.0
    q = torch.zeros_like(w)
    scale = zero = None
    if group_size == columns:
        scale, zero = group_qparams(w.float(), bits, symmetric)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block, errors = w[:, start:end].clone(), torch.zeros(w.shape[0], end - start, dtype=w.dtype)
        ub = u[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if group_size != columns and column % group_size == 0:
                later = w[:, end:end + group_size] - errors[:, :i] @ u[start:column, end:end + group_size]
                group = torch.cat([block[:, i:], later], 1)[:, :group_size]  # as updated so far
                scale, zero = group_qparams(group.float(), bits, symmetric)
            qj = _quantize_column(block[:, i].float(), scale, zero, bits, symmetric).double()
            q[:, column] = qj
            error = (block[:, i] - qj) / ub[i, i]
            block[:, i:] -= error[:, None] * ub[i, i:][None, :]
            errors[:, i] = error
        w[:, end:] -= errors @ u[start:end, end:]
    return q.float()


def quantize_weights(model: nn.Module, batches: Sequence | None, bits: int = 4, group_size: int | None = None,
                     method: str = "gptq", symmetric: bool = False, layers: L.Layers = None,
                     groups: Sequence[Sequence[str]] | None = None) -> nn.Module:
    """A copy of ``model`` whose selected Linear weights are quantized, weight-only, one shot.

    Each weight is replaced by its dequantized value (float32 on the grid of ``bits`` levels),
    so the copy runs with the float kernels and computes what a weight-only kernel would.

    Parameters
    ----------
    model
        Any module (left untouched).
    batches
        Calibration inputs for GPTQ, one forward pass each; ignored (may be None) for RTN.
    bits, group_size, symmetric
        The grid, as in :func:`rtn_quantize`.
    method
        ``"rtn"`` (:func:`rtn_quantize`) or ``"gptq"`` (:func:`gptq_quantize`).
    layers
        A selection of Linear layers; all when None.
    groups
        Sequential processing for GPTQ, as :func:`nncompress.calibration.layerwise_`.

    Returns
    -------
    nn.Module
        The quantized copy.

    References
    ----------
    frantar2023optq
    """
    validate.choice(method, "method", WEIGHT_METHODS)
    out = copy.deepcopy(model)
    if method == "rtn":
        for layer in L.select(out, layers, types=(nn.Linear,)).values():
            with torch.no_grad():
                layer.weight.copy_(rtn_quantize(layer.weight, bits, group_size, symmetric))
        return out

    def transform(name: str, layer: nn.Linear, stats) -> None:
        with torch.no_grad():
            layer.weight.copy_(gptq_quantize(layer.weight, stats.gram, bits, group_size, symmetric))

    return layerwise_(out, batches, layers, transform, groups)
