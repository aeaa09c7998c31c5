"""Integer-only arithmetic, as in Jacob et al.: fixed-point multipliers, requantization, and a
Linear layer computed with 8-bit codes and 32-bit accumulators only.
"""

from __future__ import annotations

import torch
from torch import nn

from .affine import _as_tensor, qparams, quantize
from .ranges import minmax_range

__all__ = ["fixed_point_multiplier", "requantize", "IntegerLinear"]


def fixed_point_multiplier(m) -> tuple[torch.Tensor, torch.Tensor]:
    """Write real multipliers ``0 < m < 1`` as ``m0 * 2^-31 * 2^-shift`` with int32 ``m0`` in ``[2^30, 2^31)``.

    This is how integer-only inference applies ``M = s_in s_w / s_out`` with one integer
    multiplication and one shift.

    Parameters
    ----------
    m
        A real multiplier or a tensor of them, each in (0, 1).

    Returns
    -------
    tuple of torch.Tensor
        ``(m0, shift)``, int64, shaped like ``m``.

    Raises
    ------
    ValueError
        Unless every ``m`` is in (0, 1).

    References
    ----------
    jacob2018quantization
    """
    m = _as_tensor(m, torch.float64)
    if not ((m > 0) & (m < 1)).all():
        raise ValueError(f"multiplier must be in (0, 1), got [{float(m.min())}, {float(m.max())}]")
    mantissa, exponent = torch.frexp(m)  # m = mantissa * 2^exponent, mantissa in [0.5, 1)
    m0 = torch.round(mantissa * (1 << 31)).to(torch.int64)
    carry = m0 == (1 << 31)  # mantissa rounded up to 1.0
    m0 = torch.where(carry, m0 // 2, m0)
    shift = (-exponent + carry.to(exponent.dtype)).to(torch.int64)
    return m0, shift


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor, zero_point: int,
               qmin: int, qmax: int) -> torch.Tensor:
    """``clamp(round(acc * M) + zero_point, qmin, qmax)`` in integer arithmetic only.

    ``acc`` is an int32 accumulator (as int64 here); ``M = m0 2^-31 2^-shift`` as from
    :func:`fixed_point_multiplier`. The high multiply rounds to nearest, and so does the
    shift (ties away from zero), as in gemmlowp.

    Parameters
    ----------
    acc
        Integer accumulators, each within int32.
    m0, shift
        The multiplier, from :func:`fixed_point_multiplier` (broadcast against ``acc``).
    zero_point, qmin, qmax
        The output's zero point and code range.

    Returns
    -------
    torch.Tensor
        int64 codes in ``[qmin, qmax]``.

    References
    ----------
    jacob2018quantization
    """
    acc = acc.to(torch.int64)
    prod = acc * m0  # fits in int64: |acc| < 2^31, m0 < 2^31
    nudge = torch.where(prod >= 0, 1 << 30, 1 - (1 << 30))
    high = torch.div(prod + nudge, 1 << 31, rounding_mode="trunc")  # rounding doubling high multiply
    mask = (1 << shift) - 1
    remainder = high & mask
    threshold = (mask >> 1) + (high < 0).to(torch.int64)
    out = (high >> shift) + (remainder > threshold).to(torch.int64)
    return (out + zero_point).clamp(qmin, qmax)


class IntegerLinear(nn.Module):
    """A Linear layer computed with integers only, as in Jacob et al.

    Inputs are unsigned 8-bit codes with ``(in_scale, in_zero_point)``; weights are signed
    8-bit codes with a per-output-channel ``scale`` and zero point 0; the bias is an int32 code
    with scale ``in_scale * w_scale``. Products accumulate in int32, and each output is
    requantized to unsigned 8 bits with a fixed-point multiplier and a shift. With ``relu`` the
    lower clamp is the output zero point, so the ReLU costs nothing.

    Parameters
    ----------
    linear
        The float layer.
    in_scale, in_zero_point, out_scale, out_zero_point
        The input's and the output's (unsigned 8-bit) quantization parameters.
    relu
        Fuse a ReLU.
    weight_scale
        Per-output-channel weight scales; default symmetric min-max on the weight.

    Raises
    ------
    ValueError
        If a requantization multiplier ``in_scale * w_scale / out_scale`` is not in (0, 1).
    TypeError
        On :meth:`forward`, for input codes that are not uint8.

    References
    ----------
    jacob2018quantization
    """

    def __init__(self, linear: nn.Linear, in_scale: float, in_zero_point: int, out_scale: float,
                 out_zero_point: int, relu: bool = False, weight_scale: torch.Tensor | None = None):
        super().__init__()
        w = linear.weight.detach()
        if weight_scale is None:
            weight_scale, _ = qparams(*minmax_range(w, axis=0), bits=8, symmetric=True)
        self.register_buffer("weight", quantize(w, weight_scale, 0, 8, True, axis=0).to(torch.int8))  # (out, in)
        bias_scale = in_scale * weight_scale.double()  # (out,)
        bias = linear.bias.detach() if linear.bias is not None else torch.zeros(w.shape[0])
        self.register_buffer("bias", torch.round(bias.double() / bias_scale).to(torch.int32))
        m0, shift = fixed_point_multiplier(bias_scale / out_scale)
        self.register_buffer("m0", m0)
        self.register_buffer("shift", shift)
        self.in_zero_point, self.out_zero_point, self.relu = int(in_zero_point), int(out_zero_point), relu
        self.in_scale, self.out_scale = float(in_scale), float(out_scale)
        self.register_buffer("weight_scale", weight_scale.float())

    def accumulate(self, q: torch.Tensor) -> torch.Tensor:
        """int32 accumulators ``(q - z_in) W^T + b`` for uint8 input codes ``q`` of shape (batch, in)."""
        if q.dtype != torch.uint8:
            raise TypeError(f"input codes must be uint8, got {q.dtype}")
        centered = q.to(torch.int32) - self.in_zero_point  # (batch, in)
        return centered @ self.weight.to(torch.int32).T + self.bias  # (batch, out), int32

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        """uint8 output codes for uint8 input codes ``q`` of shape (batch, in)."""
        acc = self.accumulate(q)
        low = self.out_zero_point if self.relu else 0
        return requantize(acc, self.m0, self.shift, self.out_zero_point, low, 255).to(torch.uint8)
