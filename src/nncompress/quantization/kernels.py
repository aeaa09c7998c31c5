"""Weight-only quantized Linear layers that run on torch's CPU kernels: int8 and int4 weights.

Decoding one sequence multiplies each weight matrix by a single vector: two operations per
weight read from memory, so a large model's speed is set by how many bytes of weights cross the
memory bus per token, not by arithmetic (Pope et al., 2023). Storing weights in 8 or 4 bits and
widening them inside the kernel reads 4x or 8x fewer bytes. torch ships such kernels for x86:
``aten._weight_int8pack_mm`` (int8 weights, one scale per output row, activations in float) and
``aten._weight_int4pack_mm_for_cpu`` (4-bit weights packed two per byte, a scale and an offset
per group of input columns), the kernels of gpt-fast and torchao's weight-only modes.

:class:`Int8WeightLinear` and :class:`Int4WeightLinear` hold a layer in those formats, made from
the package's round-to-nearest grids (:func:`nncompress.quantization.rtn_quantize`), so they
compute exactly the dequantized weight's product (up to float rounding); :func:`to_weight_kernels`
converts the Linear layers of a model.

References: pope2023efficiently, frantar2023optq
"""

from __future__ import annotations

import torch
from torch import nn

from .. import layers as L
from .. import validate
from .gptq import rtn_quantize

__all__ = ["Int8WeightLinear", "Int4WeightLinear", "to_weight_kernels"]


def _check_linear(linear) -> nn.Linear:
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    return linear


class Int8WeightLinear(nn.Module):
    """A Linear layer with int8 weights (symmetric, one scale per output row) on torch's int8 kernel.

    Parameters
    ----------
    linear
        The float layer (left untouched).
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        _check_linear(linear)
        weight, grid = rtn_quantize(linear.weight, 8, None, symmetric=True, return_grid=True)
        self.register_buffer("codes", (grid.codes(weight) - 128).to(torch.int8))
        self.register_buffer("scales", grid.scale[:, 0].float().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).contiguous(), self.codes, self.scales)
        y = y.view(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


class Int4WeightLinear(nn.Module):
    """A Linear layer with 4-bit weights in groups of input columns, on torch's int4 CPU kernel.

    The grid is :func:`rtn_quantize`'s asymmetric 4-bit grid (codes 0 to 15, a scale and zero
    point per group); torch's kernel computes ``(code - 8) * scale + offset``, so the offset
    stored is ``(8 - zero_point) * scale``.

    Parameters
    ----------
    linear
        The float layer (left untouched); its input features must be a multiple of ``group_size``
        and its output features of 16.
    group_size
        Input columns per scale: 32, 64, 128 or 256 (what the kernel accepts).
    """

    def __init__(self, linear: nn.Linear, group_size: int = 128):
        super().__init__()
        _check_linear(linear)
        self.group_size = validate.choice(group_size, "group_size", (32, 64, 128, 256))
        if linear.in_features % group_size:
            raise ValueError(f"group_size={group_size} must divide in_features={linear.in_features}")
        if linear.out_features % 16:
            raise ValueError(f"the int4 kernel needs out_features divisible by 16, got {linear.out_features}")
        weight, grid = rtn_quantize(linear.weight, 4, group_size, return_grid=True)
        codes = grid.codes(weight).to(torch.int32)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        offsets = (8 - grid.zero_point.float()) * grid.scale
        self.register_buffer("scales_and_zeros", torch.stack([grid.scale, offsets], -1).transpose(0, 1).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.reshape(-1, shape[-1]).contiguous(), self.packed,
                                                       self.group_size, self.scales_and_zeros)
        y = y.view(*shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias


def to_weight_kernels(model: nn.Module, bits: int = 8, group_size: int = 128, layers: L.Layers = None) -> nn.Module:
    """A copy of ``model`` whose selected Linear layers run on torch's weight-only int8 or int4 kernels.

    Parameters
    ----------
    model
        Any module (left untouched).
    bits
        8 (:class:`Int8WeightLinear`) or 4 (:class:`Int4WeightLinear`).
    group_size
        For 4 bits, as :class:`Int4WeightLinear`.
    layers
        A selection of Linear layers; all of them when None.

    Returns
    -------
    nn.Module
        The converted copy.

    References
    ----------
    pope2023efficiently
    """
    validate.module(model)
    bits = validate.choice(bits, "bits", (8, 4))
    chosen = L.select(model, layers, types=(nn.Linear,))
    make = (lambda m: Int8WeightLinear(m)) if bits == 8 else (lambda m: Int4WeightLinear(m, group_size))
    return L.replace(model, {name: make(m) for name, m in chosen.items()})
