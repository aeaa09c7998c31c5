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
import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import layers as L
from .. import validate
from ..calibration import inverse_hessian_factor, layerwise_, one_thread
from ..coding import pack_bits, unpack_bits
from .affine import fake_quantize, qparams, qrange

__all__ = ["group_qparams", "WeightGrid", "rtn_quantize", "gptq_quantize", "WEIGHT_METHODS", "quantize_weights",
           "weight_only_state", "weight_only_bytes", "weight_only_weights"]

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


@dataclass(frozen=True)
class WeightGrid:
    """The grids of a group-quantized weight: what a weight-only kernel stores beside the codes.

    Attributes
    ----------
    bits, group_size, symmetric
        As :func:`rtn_quantize` (``group_size`` is the number of columns when there is one grid per row).
    scale, zero_point
        ``(rows, groups)``: group ``g`` of row ``r`` covers columns ``g * group_size`` onwards.
    """

    bits: int
    group_size: int
    symmetric: bool
    scale: torch.Tensor
    zero_point: torch.Tensor

    def _columns(self, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(columns) // self.group_size
        return self.scale[:, index], self.zero_point[:, index]

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The codes of ``weight`` (a weight on this grid), from 0 to ``2**bits - 1``: int64, like ``weight``."""
        qmin, qmax = qrange(self.bits, self.symmetric)
        scale, zero = self._columns(weight.shape[1])
        codes = (torch.round(weight.detach().float() * (1.0 / scale)) + zero).clamp(qmin, qmax)
        return codes.to(torch.int64) - qmin

    def weight(self, codes: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`codes`: the dequantized weight, float32, as the quantizer computed it."""
        qmin, _ = qrange(self.bits, self.symmetric)
        scale, zero = self._columns(codes.shape[1])
        return ((codes + qmin).float() - zero) * scale


def rtn_quantize(weight: torch.Tensor, bits: int = 4, group_size: int | None = None,
                 symmetric: bool = False, return_grid: bool = False):
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
    return_grid
        Whether to return the grids too.

    Returns
    -------
    torch.Tensor or tuple
        The dequantized weight, float32, shaped like ``weight``; with ``return_grid``, the pair
        ``(weight, WeightGrid)``.

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
    grids = []
    for start in range(0, weight.shape[1], group_size):
        group = weight[:, start:start + group_size].float()
        scale, zero = group_qparams(group, bits, symmetric)
        out[:, start:start + group_size] = fake_quantize(group, scale, zero, bits, signed=symmetric, axis=0)
        grids.append((scale, zero))
    return (out, _grid(grids, bits, group_size, symmetric)) if return_grid else out


def _grid(grids: list, bits: int, group_size: int, symmetric: bool) -> WeightGrid:
    scale = torch.stack([torch.as_tensor(s, dtype=torch.float32) for s, _ in grids], 1)
    zero = torch.stack([torch.as_tensor(z) for _, z in grids], 1).to(torch.int64)
    return WeightGrid(bits, group_size, symmetric, scale, zero)


def gptq_quantize(weight: torch.Tensor, gram: torch.Tensor, bits: int = 4, group_size: int | None = None,
                  symmetric: bool = False, block_size: int = 128, damp: float = 0.01, return_grid: bool = False):
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
    return_grid
        Whether to return the grids too.

    Returns
    -------
    torch.Tensor or tuple
        The dequantized weight, float32; columns the data never excites are zero. With
        ``return_grid``, the pair ``(weight, WeightGrid)``.

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
    grids = []
    if group_size == columns:
        scale, zero = group_qparams(w.float(), bits, symmetric)
        grids.append((scale, zero))
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block, errors = w[:, start:end].clone(), torch.zeros(w.shape[0], end - start, dtype=w.dtype)
        ub = u[start:end, start:end]
        with one_thread():
            for i in range(end - start):
                column = start + i
                if group_size != columns and column % group_size == 0:
                    later = w[:, end:end + group_size] - errors[:, :i] @ u[start:column, end:end + group_size]
                    group = torch.cat([block[:, i:], later], 1)[:, :group_size]  # as updated so far
                    scale, zero = group_qparams(group.float(), bits, symmetric)
                    grids.append((scale, zero))
                qj = _quantize_column(block[:, i].float(), scale, zero, bits, symmetric).double()
                q[:, column] = qj
                error = (block[:, i] - qj) / ub[i, i]
                block[:, i:] -= error[:, None] * ub[i, i:][None, :]
                errors[:, i] = error
        w[:, end:] -= errors @ u[start:end, end:]
    q = q.float()
    return (q, _grid(grids, bits, group_size, symmetric)) if return_grid else q


def quantize_weights(model: nn.Module, batches: Sequence | None, bits: int = 4, group_size: int | None = None,
                     method: str = "gptq", symmetric: bool = False, layers: L.Layers = None,
                     groups: Sequence[Sequence[str]] | None = None) -> nn.Module:
    """A copy of ``model`` whose selected Linear weights are quantized, weight-only, one shot.

    Each weight is replaced by its dequantized value (float32 on the grid of ``bits`` levels),
    so the copy runs with the float kernels and computes what a weight-only kernel would. Each
    quantized layer keeps its grid as ``layer.weight_grid`` (a :class:`WeightGrid`), from which
    :func:`weight_only_state` writes the stored form.

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
        A selection of Linear layers (all Linear layers when None); RTN also accepts Embedding
        layers named here, with one grid per row (per token) or per group of ``group_size`` columns.
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
        types = (nn.Linear,) if layers is None else (nn.Linear, nn.Embedding)  # tables only when named
        for layer in L.select(out, layers, types=types).values():
            weight, layer.weight_grid = rtn_quantize(layer.weight, bits, group_size, symmetric, return_grid=True)
            with torch.no_grad():
                layer.weight.copy_(weight)
        return out

    def transform(name: str, layer: nn.Linear, stats) -> None:
        weight, layer.weight_grid = gptq_quantize(layer.weight, stats.gram, bits, group_size, symmetric,
                                                  return_grid=True)
        with torch.no_grad():
            layer.weight.copy_(weight)

    return layerwise_(out, batches, layers, transform, groups)


def _gridded(model: nn.Module) -> dict[str, nn.Module]:
    validate.module(model)
    found = {name: m for name, m in model.named_modules() if isinstance(getattr(m, "weight_grid", None), WeightGrid)}
    if not found:
        raise ValueError("model has no weight-only quantized layers; quantize it with quantize_weights first")
    return found


def weight_only_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The stored form of a weight-only quantized model: bit-packed codes, grids, the rest as is.

    Every layer quantized by :func:`quantize_weights` is stored as ``<layer>.codes`` (uint8,
    ``bits`` per weight), ``<layer>.shape``, ``<layer>.grid`` (int32: bits, group size,
    symmetric), ``<layer>.scale`` (float32, one per row and group) and ``<layer>.zero_point``
    (uint8 for up to 8 bits); every other entry of the state dict (biases, normalizations,
    layers left in float) as it is. :func:`weight_only_weights` reads the weights back exactly.

    Parameters
    ----------
    model
        A model returned by :func:`quantize_weights`.

    Returns
    -------
    dict
        ``{name: tensor}``, ready for ``torch.save``.

    Raises
    ------
    TypeError
        If ``model`` is not a module.
    ValueError
        If it has no weight-only quantized layer.

    References
    ----------
    frantar2023optq
    """
    gridded = _gridded(model)
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, layer in gridded.items():
            grid, weight = layer.weight_grid, layer.weight
            prefix = f"{name}." if name else ""
            state[f"{prefix}codes"] = pack_bits(grid.codes(weight), grid.bits)
            state[f"{prefix}shape"] = torch.tensor(weight.shape, dtype=torch.int32)
            state[f"{prefix}grid"] = torch.tensor([grid.bits, grid.group_size, int(grid.symmetric)], dtype=torch.int32)
            state[f"{prefix}scale"] = grid.scale.clone()
            state[f"{prefix}zero_point"] = grid.zero_point.to(torch.uint8 if grid.bits <= 8 else torch.int32)
        stored = {f"{name}.weight" if name else "weight" for name in gridded}
        for key, value in model.state_dict().items():
            if key not in stored:
                state[key] = value.clone()
    return state


def weight_only_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(weight_only_state(model))``: the weight-only model's real stored size.

    Parameters
    ----------
    model
        A model returned by :func:`quantize_weights`.

    Returns
    -------
    int
        The size in bytes.

    Raises
    ------
    TypeError, ValueError
        As :func:`weight_only_state`.
    """
    buffer = io.BytesIO()
    torch.save(weight_only_state(model), buffer)
    return buffer.getbuffer().nbytes


def weight_only_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The dequantized weights stored in ``state`` (from :func:`weight_only_state`): ``{layer.weight: tensor}``.

    Parameters
    ----------
    state
        A stored weight-only model.

    Returns
    -------
    dict
        One float32 weight per quantized layer, equal to the quantized model's.

    Raises
    ------
    TypeError
        If ``state`` is not a mapping.
    ValueError
        If it holds no packed layer, or a layer's entries are missing.
    """
    validate.mapping(state, "state")
    layers = [key[:-len("codes")] for key in state if key.endswith("codes")]
    if not layers:
        raise ValueError("state holds no weight-only quantized layer (no '<layer>.codes' entry)")
    out = {}
    for prefix in layers:
        missing = [f"{prefix}{k}" for k in ("shape", "grid", "scale", "zero_point") if f"{prefix}{k}" not in state]
        if missing:
            raise ValueError(f"state lacks {missing} for the packed layer {prefix[:-1] or '(root)'}")
        shape = [int(n) for n in state[f"{prefix}shape"]]
        bits, group_size, symmetric = (int(v) for v in state[f"{prefix}grid"])
        grid = WeightGrid(bits, group_size, bool(symmetric), state[f"{prefix}scale"],
                          state[f"{prefix}zero_point"].to(torch.int64))
        codes = unpack_bits(state[f"{prefix}codes"], bits, shape[0] * shape[1]).reshape(shape)
        out[f"{prefix}weight"] = grid.weight(codes)
    return out
