"""Level (b): the quantizers a model carries.

Weight quantizers (:class:`WeightFakeQuant`, :class:`BinaryWeight`, :class:`TernaryWeight`) are
parametrizations of a layer's ``weight``, attached through :mod:`nncompress.parametrizations`.
An activation quantizer (:class:`ActFakeQuant`) is a child module of the layer whose input
(``input_quant``) or output (``output_quant``) it quantizes; the layer calls it through a forward
(pre-)hook that is a bound method of the quantizer itself, so ``copy.deepcopy`` of a model maps
each hook to the copy's own quantizer.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import validate
from .affine import _check_axis, fake_quantize, qparams, qrange, quantize
from .ranges import Observer, calibrated_range

__all__ = ["binarize", "ternarize", "WeightFakeQuant", "BinaryWeight", "TernaryWeight", "ActFakeQuant"]


def _lsq_scale(scale: torch.Tensor, numel: int, bits: int, signed: bool) -> torch.Tensor:
    """The scale a quantizer uses: a learned one gets LSQ's gradient factor ``1 / sqrt(numel * qmax)``.

    A scale that training pushes to zero or below is held at the smallest positive float32, which
    quantizes its channel to (almost) zero rather than failing.
    """
    if scale.requires_grad:
        g = (numel / scale.numel() * max(1, qrange(bits, signed)[1])) ** -0.5
        scale = scale * g + (scale - scale * g).detach()  # value of scale, gradient times g
    return scale.clamp(min=torch.finfo(torch.float32).eps)


def _straight_through(w: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass; the gradient of ``w`` where ``|w| <= 1``, else 0."""
    clipped = w.clamp(-1.0, 1.0)
    return value + (clipped - clipped.detach())


def _reduce_dims(w: torch.Tensor, axis) -> list[int]:
    """The dimensions to average over for one value per channel along ``axis``."""
    axis = _check_axis(w, axis)
    return [d for d in range(w.dim()) if d != axis] if axis is not None else list(range(w.dim()))


def binarize(w: torch.Tensor, axis: int | None = 0) -> torch.Tensor:
    """Binary weights with a scaling factor: ``alpha * sign(w)``, ``alpha = mean |w|`` per channel.

    ``alpha`` is the least-squares optimal scale for ``sign(w)`` (XNOR-Net's binary-weight
    networks); ``sign(0)`` is taken as +1 so the result is strictly binary. Gradients pass
    straight through where ``|w| <= 1`` (BinaryConnect's clipped straight-through estimator).

    Parameters
    ----------
    w
        A weight tensor.
    axis
        The channel axis (one ``alpha`` per channel), or None for one ``alpha``.

    Returns
    -------
    torch.Tensor
        Shaped like ``w``.

    Raises
    ------
    ValueError
        For an ``axis`` out of range.

    References
    ----------
    courbariaux2015binaryconnect, rastegari2016xnor
    """
    dims = _reduce_dims(w, axis)
    alpha = w.detach().abs().mean(dim=dims, keepdim=True)
    signs = torch.where(w.detach() >= 0, 1.0, -1.0)
    return _straight_through(w, alpha * signs)


def ternarize(w: torch.Tensor, threshold: float = 0.7, axis: int | None = 0) -> torch.Tensor:
    """Ternary weights ``alpha * sign(w) * [|w| > delta]`` with ``delta = threshold * mean |w|``.

    ``alpha`` is the mean of ``|w|`` over the weights above the threshold, per channel (the
    approximate solution of ternary weight networks; ``threshold = 0.7`` as in the paper).

    Parameters
    ----------
    w, axis
        As :func:`binarize`.
    threshold
        In [0, 2).

    Returns
    -------
    torch.Tensor
        Shaped like ``w``.

    Raises
    ------
    ValueError
        For a ``threshold`` outside [0, 2) or an ``axis`` out of range.

    References
    ----------
    li2016ternary
    """
    threshold = validate.number(threshold, "threshold", 0.0, 2.0, high_open=True)
    dims = _reduce_dims(w, axis)
    a = w.detach().abs()
    keep = a > threshold * a.mean(dim=dims, keepdim=True)
    alpha = (a * keep).sum(dim=dims, keepdim=True) / keep.sum(dim=dims, keepdim=True).clamp(min=1)
    return _straight_through(w, alpha * torch.sign(w.detach()) * keep)


class WeightFakeQuant(nn.Module):
    """Parametrization that fake-quantizes a weight with a stored ``scale`` and ``zero_point``.

    The quantization parameters are calibrated from the weight when the module is created
    (:meth:`from_weight`); with ``learn_scale`` the scale is a trainable parameter (LSQ).

    Parameters
    ----------
    scale, zero_point
        As :func:`~.affine.fake_quantize` (one value, or one per channel along ``axis``).
    bits, signed, axis
        The quantizer, as :func:`~.affine.fake_quantize`.
    learn_scale
        Make ``scale`` an ``nn.Parameter``.

    Raises
    ------
    TypeError, ValueError
        For ``bits`` that is not an int in [1, 16].

    References
    ----------
    jacob2018quantization, esser2020learned
    """

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, signed: bool,
                 axis: int | None, learn_scale: bool = False):
        super().__init__()
        self.bits, self.signed, self.axis = validate.bits(bits), signed, axis
        scale = scale.detach().clone().float()
        if learn_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        self.register_buffer("zero_point", zero_point.detach().clone().to(torch.int32))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bits: int = 8, per_channel: bool = True, symmetric: bool = True,
                    method: str = "minmax", learn_scale: bool = False, percentile: float = 99.99):
        """Calibrate ``scale`` and ``zero_point`` on ``weight`` (per output channel if ``per_channel``)."""
        axis = 0 if per_channel else None
        lo, hi = calibrated_range(weight, method, bits, symmetric, axis=axis, percentile=percentile)
        scale, zero_point = qparams(lo, hi, bits, symmetric)
        return cls(scale, zero_point, bits, symmetric, axis, learn_scale)

    def effective_scale(self, numel: int = 1) -> torch.Tensor:
        """The scale the forward pass uses (see :func:`_lsq_scale`)."""
        return _lsq_scale(self.scale, numel, self.bits, self.signed)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The fake-quantized ``weight``."""
        return fake_quantize(weight, self.effective_scale(weight.numel()), self.zero_point, self.bits,
                             self.signed, self.axis)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight's integer codes, shifted to ``[0, 2^bits)`` for packing."""
        scale = self.effective_scale().detach()
        codes = quantize(weight, scale, self.zero_point, self.bits, self.signed, self.axis)
        return codes - qrange(self.bits, self.signed)[0]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, axis={self.axis}"


class BinaryWeight(nn.Module):
    """Parametrization: :func:`binarize` the weight (one bit plus one scale per output channel).

    References
    ----------
    courbariaux2015binaryconnect, rastegari2016xnor
    """

    bits = 1

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The binarized ``weight``."""
        return binarize(weight)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """One bit per weight: 1 for ``w >= 0``."""
        return (weight.detach() >= 0).to(torch.int64)


class TernaryWeight(nn.Module):
    """Parametrization: :func:`ternarize` the weight (codes -1, 0, 1 in two bits).

    Parameters
    ----------
    threshold
        As :func:`ternarize`, in [0, 2).

    Raises
    ------
    ValueError
        For a ``threshold`` outside [0, 2).

    References
    ----------
    li2016ternary
    """

    bits = 2

    def __init__(self, threshold: float = 0.7):
        super().__init__()
        self.threshold = validate.number(threshold, "threshold", 0.0, 2.0, high_open=True)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The ternarized ``weight``."""
        return ternarize(weight, self.threshold)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Two bits per weight: 0, 1, 2 for -alpha, 0, +alpha."""
        return (torch.sign(ternarize(weight.detach(), self.threshold)) + 1).to(torch.int64)


class ActFakeQuant(nn.Module):
    """Fake-quantizes activations at one quantization point of a model (per tensor).

    A fresh module only observes (identity, recording statistics in ``observer``);
    :meth:`set_range` fixes ``scale`` and ``zero_point`` and switches it to quantizing. A layer
    calls it through :meth:`input_hook` (a forward pre-hook, on the layer's first input) or
    :meth:`output_hook` (a forward hook, on its output).

    Parameters
    ----------
    bits
        Bit width, an int in [1, 16].
    signed
        Signed codes.
    learn_scale
        Make ``scale`` a trainable parameter (LSQ) once the range is set.
    reduce_range
        Use only half of the codes (``bits - 1`` bits of range, stored in ``bits``), as
        ``torch.ao``'s x86 configuration does: the x86 engine's 8-bit kernels on CPUs without
        VNNI add pairs of u8 x s8 products in int16, which saturates on full-range inputs.

    Raises
    ------
    TypeError, ValueError
        For ``bits`` that is not an int in [1, 16].

    References
    ----------
    jacob2018quantization, esser2020learned
    """

    def __init__(self, bits: int = 8, signed: bool = False, learn_scale: bool = False, reduce_range: bool = False):
        super().__init__()
        self.bits, self.signed, self.learn_scale = validate.bits(bits), signed, learn_scale
        self.reduce_range = bool(reduce_range)
        if self.reduce_range and self.bits < 2:
            raise ValueError(f"reduce_range needs bits >= 2, got bits={bits!r}")
        self.observer = Observer()
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("enabled", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` recorded (before calibration) or fake-quantized (after)."""
        if not bool(self.enabled):
            return self.observer(x)
        scale = _lsq_scale(self.scale, x[0].numel(), self.range_bits, self.signed)
        return fake_quantize(x, scale, self.zero_point, self.range_bits, self.signed)

    @property
    def range_bits(self) -> int:
        """The bits whose codes are used: ``bits``, or ``bits - 1`` with ``reduce_range``."""
        return self.bits - self.reduce_range

    def input_hook(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook: quantize the layer's first input."""
        return (self(args[0]), *args[1:])

    def output_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: quantize the layer's output."""
        return self(output)

    def set_range(self, lo, hi) -> None:
        """Fix ``scale`` and ``zero_point`` for the range ``[lo, hi]`` and start quantizing."""
        scale, zero_point = qparams(lo, hi, self.range_bits, symmetric=False, signed=self.signed)
        if self.learn_scale:
            del self.scale
            self.scale = nn.Parameter(scale)
        else:
            self.scale = scale
        self.zero_point = zero_point
        self.enabled = torch.tensor(True)
        self.observer.reset()

    def extra_repr(self) -> str:
        reduced = ", reduce_range=True" if self.reduce_range else ""
        return f"bits={self.bits}, signed={self.signed}{reduced}, enabled={bool(self.enabled)}"
