"""Level (a): uniform affine quantization of tensors.

A *b*-bit uniform affine quantizer maps a real ``x`` to the integer

    q = clamp(round(x / scale) + zero_point, qmin, qmax)

and back to ``(q - zero_point) * scale``. Inside ``[(qmin - zero_point) scale,
(qmax - zero_point) scale]`` the round trip errs by at most ``scale / 2``; outside, values clip.
:func:`qparams` turns a clipping range into ``scale`` and ``zero_point``; :func:`fake_quantize`
applies them with the straight-through estimator.
"""

from __future__ import annotations

import torch

from .. import validate

__all__ = ["qrange", "qparams", "fake_quantize", "quantize", "dequantize"]


def qrange(bits: int, signed: bool = False) -> tuple[int, int]:
    """The integer range of ``bits``-bit codes.

    Parameters
    ----------
    bits
        Bit width, an int in [1, 16].
    signed
        Two's-complement codes ``[-2^(b-1), 2^(b-1) - 1]`` instead of ``[0, 2^b - 1]``.

    Returns
    -------
    tuple of int
        ``(qmin, qmax)``.

    Raises
    ------
    TypeError, ValueError
        If ``bits`` is not an int in [1, 16].

    References
    ----------
    jacob2018quantization
    """
    bits = validate.bits(bits)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _check_axis(x: torch.Tensor, axis) -> int | None:
    """``axis`` normalized to ``[0, x.dim())``, or None."""
    if axis is None:
        return None
    if not isinstance(axis, int) or isinstance(axis, bool) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be None or an int in [{-x.dim()}, {x.dim() - 1}] for a "
                         f"{x.dim()}-d tensor, got {axis!r}")
    return axis % x.dim()


def _as_tensor(value, dtype) -> torch.Tensor:
    """``value`` as a detached tensor of ``dtype``."""
    return value.detach().to(dtype) if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=dtype)


def _check_qparams(x, scale, zero_point, qmin, qmax, axis):
    """Validate and broadcast ``scale``/``zero_point`` to ``x`` (per tensor, or along ``axis``)."""
    axis = _check_axis(x, axis)
    scale_t = _as_tensor(scale, torch.float32)
    zp_t = _as_tensor(zero_point, torch.float32)
    if not torch.isfinite(scale_t).all() or (scale_t <= 0).any():
        raise ValueError(f"scale must be finite and > 0, got min {float(scale_t.min())}")
    if (zp_t != zp_t.round()).any() or (zp_t < qmin).any() or (zp_t > qmax).any():
        raise ValueError(f"zero_point must be an integer in [{qmin}, {qmax}], got "
                         f"[{float(zp_t.min())}, {float(zp_t.max())}]")
    channels = 1 if axis is None else x.shape[axis]
    for name, t in (("scale", scale_t), ("zero_point", zp_t)):
        if t.dim() > 1 or t.numel() not in (1, channels):
            raise ValueError(f"{name} must hold 1 or {channels} value(s) (axis={axis}), got shape {tuple(t.shape)}")
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1  # broadcast along axis: (1, ..., channels or 1, ..., 1)
        return scale_t.reshape(shape), zp_t.reshape(shape)
    return scale_t.reshape(()), zp_t.reshape(())


class _FakeQuantize(torch.autograd.Function):
    """Torch-exact fake quantization with the straight-through estimator.

    d out / d x is 1 where the code is not clipped and 0 where it is; d out / d scale is the
    LSQ gradient ``round(x/s) - x/s`` inside the range and ``q_clip - zero_point`` outside.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax):
        inv = 1.0 / scale  # float32, as torch computes it
        code = torch.round(x * inv) + zero_point
        clipped = code.clamp(qmin, qmax)
        inside = (code >= qmin) & (code <= qmax)
        ctx.save_for_backward(x, scale, zero_point, clipped, inside)
        return (clipped - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point, clipped, inside = ctx.saved_tensors
        grad_x = grad * inside
        grad_scale = None
        if ctx.needs_input_grad[1]:
            local = torch.where(inside, clipped - zero_point - x / scale, clipped - zero_point)
            grad_scale = (grad * local).sum_to_size(scale.shape)
        return grad_x, grad_scale, None, None, None


def fake_quantize(x: torch.Tensor, scale, zero_point=0, bits: int = 8, signed: bool = False,
                  axis: int | None = None) -> torch.Tensor:
    """Quantize and dequantize: ``(clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``.

    The result equals ``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine``
    exactly. Gradients follow the straight-through estimator (1 inside the range, 0 outside);
    a ``scale`` that requires grad receives the LSQ gradient.

    Parameters
    ----------
    x
        Any float tensor.
    scale, zero_point
        Scalars (``axis=None``, per tensor) or 1-d tensors of length ``x.shape[axis]``.
    bits, signed
        The code range, :func:`qrange`.
    axis
        None for per-tensor quantization, else the channel axis.

    Returns
    -------
    torch.Tensor
        The fake-quantized tensor, shaped like ``x``.

    Raises
    ------
    TypeError
        If ``bits`` is not an int.
    ValueError
        For ``bits`` outside [1, 16], a ``scale`` <= 0 or not finite, a ``zero_point`` outside
        ``qrange(bits, signed)`` or not an integer, an ``axis`` out of range, or a ``scale`` or
        ``zero_point`` of the wrong length.

    References
    ----------
    jacob2018quantization, bengio2013estimating, esser2020learned
    """
    qmin, qmax = qrange(bits, signed)
    s, z = _check_qparams(x, scale, zero_point, qmin, qmax, axis)
    if isinstance(scale, torch.Tensor) and scale.requires_grad:
        s = scale.reshape(s.shape)  # keep the graph for the LSQ gradient
    return _FakeQuantize.apply(x, s, z, qmin, qmax)


def quantize(x: torch.Tensor, scale, zero_point=0, bits: int = 8, signed: bool = False,
             axis: int | None = None) -> torch.Tensor:
    """The integer codes ``clamp(round(x / scale) + zero_point, qmin, qmax)``.

    Parameters
    ----------
    x, scale, zero_point, bits, signed, axis
        As :func:`fake_quantize`.

    Returns
    -------
    torch.Tensor
        int64 codes shaped like ``x``.

    Raises
    ------
    ValueError
        As :func:`fake_quantize`.

    References
    ----------
    jacob2018quantization
    """
    qmin, qmax = qrange(bits, signed)
    s, z = _check_qparams(x, scale, zero_point, qmin, qmax, axis)
    return (torch.round(x.detach() * (1.0 / s)) + z).clamp(qmin, qmax).to(torch.int64)


def dequantize(q: torch.Tensor, scale, zero_point=0, axis: int | None = None) -> torch.Tensor:
    """Real values ``(q - zero_point) * scale`` of integer codes ``q``.

    Parameters
    ----------
    q
        Integer codes.
    scale, zero_point, axis
        As :func:`fake_quantize`.

    Returns
    -------
    torch.Tensor
        float32, shaped like ``q``.

    Raises
    ------
    ValueError
        For a bad ``scale``, ``zero_point`` or ``axis``, as :func:`fake_quantize`.

    References
    ----------
    jacob2018quantization
    """
    s, z = _check_qparams(q, scale, zero_point, -(1 << 62), 1 << 62, axis)
    return (q.to(torch.float32) - z) * s


def _check_bounds(lo: torch.Tensor, hi: torch.Tensor) -> None:
    """Refuse non-finite bounds and ``lo > hi``, naming the argument."""
    for name, t in (("lo", lo), ("hi", hi)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} must be finite (no NaN or infinity), got {t.tolist()}")
    if lo.shape != hi.shape and lo.numel() != 1 and hi.numel() != 1:
        raise ValueError(f"lo and hi must have the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}")
    if bool((lo > hi).any()):
        raise ValueError(f"lo must not exceed hi, got lo {lo.tolist()} and hi {hi.tolist()}")


def qparams(lo, hi, bits: int = 8, symmetric: bool = False, signed: bool | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` that map the range ``[lo, hi]`` onto ``qrange(bits, signed)``.

    The range is first widened to include 0, so that zero is exactly representable (zero
    padding, ReLU outputs and pruned weights stay exact). Asymmetric:
    ``scale = (hi - lo) / (qmax - qmin)`` and ``zero_point = qmin - round(lo / scale)``.
    Symmetric: ``scale = max(|lo|, |hi|) / ((qmax - qmin) / 2)`` and ``zero_point`` 0 (or the
    middle of an unsigned range), as ``torch.ao``'s observers compute them. A zero-width range
    gets the smallest positive float32 step instead of a zero scale.

    Parameters
    ----------
    lo, hi
        The clipping range: scalars, or 1-d tensors of equal length (per channel).
    bits
        Bit width, an int in [1, 16].
    symmetric
        Symmetric range around zero.
    signed
        Signed codes; defaults to ``symmetric``.

    Returns
    -------
    tuple of torch.Tensor
        ``scale`` (float32) and ``zero_point`` (int32), shaped like ``lo``.

    Raises
    ------
    ValueError
        If ``lo`` or ``hi`` holds NaN or an infinity, if ``lo > hi`` anywhere (checked before
        the range is widened to include 0), or ``bits`` is outside [1, 16].

    References
    ----------
    jacob2018quantization, krishnamoorthi2018quantizing
    """
    signed = symmetric if signed is None else signed
    qmin, qmax = qrange(bits, signed)
    lo, hi = _as_tensor(lo, torch.float32), _as_tensor(hi, torch.float32)
    _check_bounds(lo, hi)
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / ((qmax - qmin) / 2), min=eps)
        zero_point = torch.full_like(scale, 0 if signed else (qmin + qmax + 1) // 2)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero_point.to(torch.int32)
