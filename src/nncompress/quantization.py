"""Quantization: uniform affine fake quantization, calibration, QAT, binary/ternary weights,
integer-only arithmetic and conversion to torch's int8 CPU kernels.

As in ``torch.ao``, observing is kept apart from transforming. Calibrators turn a tensor (or
the statistics an :class:`Observer` collected) into a clipping range ``(lo, hi)``;
:func:`qparams` turns a range into ``scale`` and ``zero_point``; :func:`fake_quantize` applies
them. A *b*-bit uniform affine quantizer maps a real ``x`` to the integer

    q = clamp(round(x / scale) + zero_point, qmin, qmax)

and back to ``(q - zero_point) * scale``. Inside ``[(qmin - zero_point) scale,
(qmax - zero_point) scale]`` the round trip errs by at most ``scale / 2``; outside, values clip.

Model-level functions work on a plain :class:`torch.nn.Sequential` view of a model (see
:func:`as_sequential`), in which every quantization point is an explicit module.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils import parametrize

from .coding import _check_bits, pack_bits
from .models import as_sequential
from .train import predict

__all__ = [
    "qrange", "qparams", "fake_quantize", "quantize", "dequantize",
    "minmax_range", "percentile_range", "mse_range", "calibrated_range", "CALIBRATIONS",
    "Observer", "WeightFakeQuant", "ActFakeQuant", "binarize", "ternarize", "BinaryWeight", "TernaryWeight",
    "as_sequential", "apply_fake_quant", "apply_binary", "calibrate", "post_training_quantize", "bake", "weight_quantizers",
    "packed_state", "packed_bytes",
    "fixed_point_multiplier", "requantize", "IntegerLinear", "to_int8",
]

CALIBRATIONS = ("minmax", "percentile", "mse")


# --------------------------------------------------------------------------- checks

def qrange(bits: int, signed: bool = False) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of ``bits``-bit codes: ``[0, 2^b - 1]`` or ``[-2^(b-1), 2^(b-1) - 1]``."""
    _check_bits(bits)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _check_axis(x: torch.Tensor, axis) -> int | None:
    if axis is None:
        return None
    if not isinstance(axis, int) or isinstance(axis, bool) or not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis must be None or an int in [{-x.dim()}, {x.dim() - 1}] for a "
                         f"{x.dim()}-d tensor, got {axis!r}")
    return axis % x.dim()


def _as_tensor(value, dtype) -> torch.Tensor:
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
        scale_t, zp_t = scale_t.reshape(shape), zp_t.reshape(shape)
    else:
        scale_t, zp_t = scale_t.reshape(()), zp_t.reshape(())
    return scale_t, zp_t


# --------------------------------------------------------------------------- level (a): tensors

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
    """Quantize and dequantize ``x``: ``(clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale``.

    ``axis=None`` quantizes per tensor (scalar ``scale`` and ``zero_point``); an int quantizes
    per channel along that axis (1-d ``scale`` and ``zero_point`` of length ``x.shape[axis]``).
    The result equals ``torch.fake_quantize_per_tensor_affine`` / ``..._per_channel_affine``
    exactly. Gradients follow the straight-through estimator (1 inside the range, 0 outside);
    a ``scale`` that requires grad receives the LSQ gradient.

    Raises ``ValueError`` for ``bits`` outside [1, 16], a ``scale`` <= 0, a ``zero_point``
    outside ``qrange(bits, signed)`` or an ``axis`` out of range.

    References: jacob2018quantization, bengio2013estimating, esser2020learned.
    """
    qmin, qmax = qrange(bits, signed)
    s, z = _check_qparams(x, scale, zero_point, qmin, qmax, axis)
    if isinstance(scale, torch.Tensor) and scale.requires_grad:
        s = scale.reshape(s.shape)  # keep the graph for the LSQ gradient
    return _FakeQuantize.apply(x, s, z, qmin, qmax)


def quantize(x: torch.Tensor, scale, zero_point=0, bits: int = 8, signed: bool = False,
             axis: int | None = None) -> torch.Tensor:
    """The integer codes ``clamp(round(x / scale) + zero_point, qmin, qmax)`` as an int64 tensor."""
    qmin, qmax = qrange(bits, signed)
    s, z = _check_qparams(x, scale, zero_point, qmin, qmax, axis)
    return (torch.round(x.detach() * (1.0 / s)) + z).clamp(qmin, qmax).to(torch.int64)


def dequantize(q: torch.Tensor, scale, zero_point=0, axis: int | None = None) -> torch.Tensor:
    """Real values ``(q - zero_point) * scale`` of integer codes ``q``."""
    s, z = _check_qparams(q, scale, zero_point, -(1 << 62), 1 << 62, axis)
    return (q.to(torch.float32) - z) * s


def qparams(lo, hi, bits: int = 8, symmetric: bool = False, signed: bool | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` that map the range ``[lo, hi]`` onto ``qrange(bits, signed)``.

    The range is first widened to include 0, so that zero is exactly representable (zero
    padding and ReLU outputs stay exact). Asymmetric: ``scale = (hi - lo) / (qmax - qmin)`` and
    ``zero_point = qmin - round(lo / scale)``. Symmetric (``zero_point`` = 0, or the middle of an
    unsigned range): ``scale = max(|lo|, |hi|) / ((qmax - qmin) / 2)``, as ``torch.ao``'s
    observers compute it. ``signed`` defaults to ``symmetric``. ``lo`` and ``hi`` may be scalars
    or 1-d tensors (per channel); the outputs have their shape. A zero-width range gets the
    smallest positive float32 step instead of a zero scale.
    """
    signed = symmetric if signed is None else signed
    qmin, qmax = qrange(bits, signed)
    lo = torch.clamp(_as_tensor(lo, torch.float32), max=0.0)
    hi = torch.clamp(_as_tensor(hi, torch.float32), min=0.0)
    if (lo > hi).any():
        raise ValueError("lo must not exceed hi")
    eps = torch.finfo(torch.float32).eps
    if symmetric:
        scale = torch.clamp(torch.maximum(-lo, hi) / ((qmax - qmin) / 2), min=eps)
        zero_point = torch.full_like(scale, 0 if signed else (qmin + qmax + 1) // 2)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax)
    return scale, zero_point.to(torch.int32)


def _per_channel_view(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as ``(channels, elements)`` (one row if ``axis`` is None)."""
    axis = _check_axis(x, axis)
    return x.detach().reshape(1, -1) if axis is None else x.detach().movedim(axis, 0).reshape(x.shape[axis], -1)


def _squeeze(t: torch.Tensor, axis) -> torch.Tensor:
    return t.reshape(()) if axis is None else t


def minmax_range(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed range: ``(min, max)`` of ``x``, per tensor or per channel along ``axis``."""
    rows = _per_channel_view(x, axis)
    return _squeeze(rows.amin(1), axis), _squeeze(rows.amax(1), axis)


def percentile_range(x: torch.Tensor, percentile: float = 99.99, axis: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the tails: the ``100 - p`` and ``p`` percentiles of ``x`` (per tensor or along ``axis``).

    References: krishnamoorthi2018quantizing, wu2020integer.
    """
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
    rows = _per_channel_view(x, axis)
    q = torch.tensor([1 - percentile / 100, percentile / 100], dtype=rows.dtype)
    lo, hi = torch.quantile(rows, q, dim=1)  # each (channels,)
    return _squeeze(lo, axis), _squeeze(hi, axis)


def mse_range(x: torch.Tensor, bits: int = 8, symmetric: bool = False, signed: bool | None = None,
              axis: int | None = None, grid: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipping range that minimizes the mean squared quantization error of ``x``.

    Searches the shrunken min-max ranges ``(a lo, a hi)`` for ``a`` in ``{1/grid, ..., 1}``,
    separately per channel when ``axis`` is given. Clipping trades a larger error on the few
    outliers for a finer ``scale`` on everything else.

    References: banner2019post, nagel2021white.
    """
    if not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    rows = _per_channel_view(x, axis)  # (channels, n)
    lo, hi = rows.amin(1), rows.amax(1)
    best_err = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for a in torch.linspace(1.0 / grid, 1.0, grid):
        s, z = qparams(a * lo, a * hi, bits, symmetric, signed)
        qmin, qmax = qrange(bits, symmetric if signed is None else signed)
        err = (fake_quantize(rows, s, z, bits, symmetric if signed is None else signed, axis=0) - rows).pow(2).mean(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, a * lo, best_lo), torch.where(better, a * hi, best_hi)
    return _squeeze(best_lo, axis), _squeeze(best_hi, axis)


def calibrated_range(x: torch.Tensor, method: str = "minmax", bits: int = 8, symmetric: bool = False,
                     signed: bool | None = None, axis: int | None = None, percentile: float = 99.99):
    """Dispatch to :func:`minmax_range`, :func:`percentile_range` or :func:`mse_range` by name."""
    if method == "minmax":
        return minmax_range(x, axis)
    if method == "percentile":
        return percentile_range(x, percentile, axis)
    if method == "mse":
        return mse_range(x, bits, symmetric, signed, axis)
    raise ValueError(f"method must be one of {CALIBRATIONS}, got {method!r}")


def binarize(w: torch.Tensor, axis: int | None = 0) -> torch.Tensor:
    """Binary weights with a scaling factor: ``alpha * sign(w)``, ``alpha = mean |w|`` per channel.

    ``alpha`` is the least-squares optimal scale for ``sign(w)`` (XNOR-Net's binary-weight
    networks); ``sign(0)`` is taken as +1 so the result is strictly binary. Gradients pass
    straight through where ``|w| <= 1`` (BinaryConnect's clipped straight-through estimator).

    References: courbariaux2015binaryconnect, rastegari2016xnor.
    """
    axis = _check_axis(w, axis)
    dims = [d for d in range(w.dim()) if d != axis] if axis is not None else list(range(w.dim()))
    alpha = w.detach().abs().mean(dim=dims, keepdim=True)
    signs = torch.where(w.detach() >= 0, 1.0, -1.0)
    return _straight_through(w, alpha * signs)


def ternarize(w: torch.Tensor, threshold: float = 0.7, axis: int | None = 0) -> torch.Tensor:
    """Ternary weights ``alpha * sign(w) * [|w| > delta]`` with ``delta = threshold * mean |w|``.

    ``alpha`` is the mean of ``|w|`` over the weights above the threshold, per channel (the
    approximate solution of ternary weight networks; ``threshold = 0.7`` as in the paper).

    References: li2016ternary.
    """
    if not 0.0 <= threshold < 2.0:
        raise ValueError(f"threshold must be in [0, 2), got {threshold!r}")
    axis = _check_axis(w, axis)
    dims = [d for d in range(w.dim()) if d != axis] if axis is not None else list(range(w.dim()))
    a = w.detach().abs()
    keep = a > threshold * a.mean(dim=dims, keepdim=True)
    alpha = (a * keep).sum(dim=dims, keepdim=True) / keep.sum(dim=dims, keepdim=True).clamp(min=1)
    return _straight_through(w, alpha * torch.sign(w.detach()) * keep)


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


# --------------------------------------------------------------------------- level (b): modules

class Observer(nn.Module):
    """Identity module that records what passes through it, for activation calibration.

    Keeps the running min and max, and a deterministic subsample (at most ``max_samples``
    values, by stride) for percentile and MSE calibration.
    """

    def __init__(self, max_samples: int = 1 << 18):
        super().__init__()
        self.max_samples = max_samples
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.samples: list[torch.Tensor] = []

    def reset(self) -> None:
        """Forget everything observed."""
        self.min_val, self.max_val = torch.tensor(float("inf")), torch.tensor(float("-inf"))
        self.samples = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.detach().reshape(-1)
        self.min_val = torch.minimum(self.min_val, v.min())
        self.max_val = torch.maximum(self.max_val, v.max())
        stride = max(1, v.numel() // self.max_samples)
        self.samples.append(v[::stride].clone())
        return x

    def range(self, method: str = "minmax", bits: int = 8, signed: bool = False, percentile: float = 99.99):
        """The calibrated ``(lo, hi)`` of everything observed so far."""
        if not self.samples:
            raise RuntimeError("the observer has seen no data; run calibration batches first")
        if method == "minmax":
            return self.min_val.clone(), self.max_val.clone()
        values = torch.cat(self.samples)
        if values.numel() > self.max_samples:
            values = values[:: values.numel() // self.max_samples + 1]
        return calibrated_range(values, method, bits, signed=signed, percentile=percentile)


class WeightFakeQuant(nn.Module):
    """Parametrization that fake-quantizes a weight with a stored ``scale`` and ``zero_point``.

    The quantization parameters are calibrated from the weight when the module is created
    (:meth:`from_weight`); with ``learn_scale`` the scale is a trainable parameter (LSQ).
    """

    def __init__(self, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, signed: bool,
                 axis: int | None, learn_scale: bool = False):
        super().__init__()
        self.bits, self.signed, self.axis = bits, signed, axis
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
        return fake_quantize(weight, self.effective_scale(weight.numel()), self.zero_point, self.bits,
                             self.signed, self.axis)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight's integer codes, shifted to ``[0, 2^bits)`` for packing."""
        scale = self.effective_scale().detach()
        return quantize(weight, scale, self.zero_point, self.bits, self.signed, self.axis) - qrange(self.bits, self.signed)[0]

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, axis={self.axis}"


class BinaryWeight(nn.Module):
    """Parametrization: :func:`binarize` the weight (one bit plus one scale per output channel)."""

    bits = 1

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return binarize(weight)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        return (weight.detach() >= 0).to(torch.int64)


class TernaryWeight(nn.Module):
    """Parametrization: :func:`ternarize` the weight (codes -1, 0, 1 in two bits)."""

    bits = 2

    def __init__(self, threshold: float = 0.7):
        super().__init__()
        self.threshold = threshold

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return ternarize(weight, self.threshold)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        return (torch.sign(ternarize(weight.detach(), self.threshold)) + 1).to(torch.int64)


class ActFakeQuant(nn.Module):
    """Fake-quantizes activations; an explicit module at each quantization point of a model.

    A fresh module only observes (identity, recording statistics in ``observer``);
    :meth:`set_range` fixes ``scale`` and ``zero_point`` and switches it to quantizing.
    """

    def __init__(self, bits: int = 8, signed: bool = False, learn_scale: bool = False):
        super().__init__()
        _check_bits(bits)
        self.bits, self.signed, self.learn_scale = bits, signed, learn_scale
        self.observer = Observer()
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("enabled", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.enabled):
            return self.observer(x)
        scale = _lsq_scale(self.scale, x[0].numel(), self.bits, self.signed)
        return fake_quantize(x, scale, self.zero_point, self.bits, self.signed)

    def set_range(self, lo, hi) -> None:
        scale, zero_point = qparams(lo, hi, self.bits, symmetric=False, signed=self.signed)
        if self.learn_scale:
            del self.scale
            self.scale = nn.Parameter(scale)
        else:
            self.scale = scale
        self.zero_point = zero_point
        self.enabled = torch.tensor(True)
        self.observer.reset()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, signed={self.signed}, enabled={bool(self.enabled)}"


# --------------------------------------------------------------------------- models

def _weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def apply_fake_quant(model: nn.Module, weight_bits: int = 8, activation_bits: int | None = 8,
                     per_channel: bool = True, weight_method: str = "minmax", percentile: float = 99.99,
                     learn_scale: bool = False) -> nn.Sequential:
    """A fake-quantized copy of ``model`` as a Sequential.

    Every Linear/Conv2d weight gets a :class:`WeightFakeQuant` parametrization (symmetric,
    signed, calibrated on the weight now with ``weight_method``). Unless ``activation_bits``
    is None, an :class:`ActFakeQuant` (unsigned, asymmetric) is placed before each such layer
    and after the last one; these observe until :func:`calibrate` fixes their ranges.

    References: jacob2018quantization, krishnamoorthi2018quantizing.
    """
    _check_bits(weight_bits)
    if activation_bits is not None:
        _check_bits(activation_bits)
    seq = as_sequential(model)
    layers: list[tuple[str, nn.Module]] = []
    for name, module in seq.named_children():
        if _weighted(module):
            quant = WeightFakeQuant.from_weight(module.weight, weight_bits, per_channel, True, weight_method,
                                                learn_scale, percentile)
            parametrize.register_parametrization(module, "weight", quant)
            if activation_bits is not None:
                layers.append((f"{name}_input", ActFakeQuant(activation_bits, signed=False, learn_scale=learn_scale)))
        layers.append((name, module))
    if activation_bits is not None:
        layers.append(("output", ActFakeQuant(activation_bits, signed=False, learn_scale=learn_scale)))
    return nn.Sequential(OrderedDict(layers)).train(seq.training)


def apply_binary(model: nn.Module, ternary: bool = False, threshold: float = 0.7) -> nn.Sequential:
    """A Sequential copy of ``model`` whose Linear/Conv2d weights are binarized (or ternarized).

    Activations stay in floating point, as in BinaryConnect and ternary weight networks.
    """
    seq = as_sequential(model)
    for module in seq.modules():
        if _weighted(module):
            parametrize.register_parametrization(module, "weight", TernaryWeight(threshold) if ternary else BinaryWeight())
    return seq


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor, method: str = "minmax", percentile: float = 99.99,
              batch_size: int = 1000) -> nn.Module:
    """Run calibration inputs ``x`` through ``model`` and fix every observing :class:`ActFakeQuant`'s range.

    Quantization points are calibrated one after another, so each sees the already-quantized
    output of the ones before it, as it will at inference.
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"method must be one of {CALIBRATIONS}, got {method!r}")
    for act in [m for m in model.modules() if isinstance(m, ActFakeQuant) and not bool(m.enabled)]:
        predict(model, x, batch_size)
        act.set_range(*act.observer.range(method, act.bits, act.signed, percentile))
        for other in model.modules():
            if isinstance(other, ActFakeQuant) and not bool(other.enabled):
                other.observer.reset()
    return model


def post_training_quantize(model: nn.Module, calibration_x: torch.Tensor, weight_bits: int = 8,
                           activation_bits: int | None = 8, per_channel: bool = True, weight_method: str = "minmax",
                           activation_method: str = "minmax", percentile: float = 99.99,
                           learn_scale: bool = False) -> nn.Sequential:
    """:func:`apply_fake_quant` followed by :func:`calibrate` on ``calibration_x``: post-training quantization.

    The result is also the starting point of quantization-aware training (train it with
    :func:`nncompress.train.fit`; ``learn_scale`` makes the scales trainable).
    """
    fq = apply_fake_quant(model, weight_bits, activation_bits, per_channel, weight_method, percentile, learn_scale)
    return calibrate(fq, calibration_x, activation_method, percentile) if activation_bits is not None else fq


def weight_quantizers(model: nn.Module) -> dict[str, tuple[nn.Module, nn.Module]]:
    """``{layer name: (layer, weight quantizer)}`` for every fake-quantized weight."""
    found = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, (WeightFakeQuant, BinaryWeight, TernaryWeight)):
                    found[name] = (module, p)
    return found


def bake(model: nn.Module) -> nn.Module:
    """Replace every weight parametrization by its current output (weights on the quantization grid), in place."""
    for name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    return model


def packed_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a deployed quantized model stores: bit-packed weight codes plus float32 scales and biases.

    Each quantized weight becomes ``<layer>.codes`` (uint8, ``bits`` per weight), ``<layer>.scale``
    and, for uniform quantizers, ``<layer>.zero_point`` (int32, zero for symmetric ones) and its
    shape; binary and ternary weights store one ``alpha`` per output channel. Biases and
    activation scales and zero points are kept as they are; calibration statistics are dropped.
    """
    quantizers = weight_quantizers(model)
    if not quantizers:
        raise ValueError("model has no quantized weights; apply_fake_quant or apply_binary first")
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, (layer, quant) in quantizers.items():
            w = layer.parametrizations.weight.original
            state[f"{name}.codes"] = pack_bits(quant.codes(w), quant.bits)
            state[f"{name}.shape"] = torch.tensor(w.shape, dtype=torch.int32)
            if isinstance(quant, WeightFakeQuant):
                state[f"{name}.scale"] = quant.effective_scale().detach().clone()
                state[f"{name}.zero_point"] = quant.zero_point.clone()
            else:
                q = layer.weight  # alpha * code per channel
                state[f"{name}.scale"] = q.abs().reshape(q.shape[0], -1).amax(1)
        skip = {f"{n}.parametrizations.weight.{suffix}" for n in quantizers
                for suffix in ("original", "0.scale", "0.zero_point")}
        for key, value in model.state_dict().items():
            if key not in skip and not key.endswith(".enabled") and ".observer." not in key:
                state[key] = value.clone()
    return state


def packed_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(packed_state(model))``: the quantized model's real stored size."""
    import io
    buffer = io.BytesIO()
    torch.save(packed_state(model), buffer)
    return buffer.getbuffer().nbytes


# --------------------------------------------------------------------------- integer-only arithmetic

def fixed_point_multiplier(m) -> tuple[torch.Tensor, torch.Tensor]:
    """Write real multipliers ``0 < m < 1`` as ``m0 * 2^-31 * 2^-shift`` with int32 ``m0`` in ``[2^30, 2^31)``.

    This is how integer-only inference applies ``M = s_in s_w / s_out`` with one integer
    multiplication and one shift. Raises ``ValueError`` unless every ``m`` is in (0, 1).

    References: jacob2018quantization.
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

    References: jacob2018quantization.
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
        acc = self.accumulate(q)
        low = self.out_zero_point if self.relu else 0
        return requantize(acc, self.m0, self.shift, self.out_zero_point, low, 255).to(torch.uint8)


# --------------------------------------------------------------------------- real int8 engine

_DEPRECATION = r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor"


def _engine_modules():
    import torch.ao.nn.intrinsic.quantized as nniq
    import torch.ao.nn.quantized as nnq
    return nnq, nniq


def to_int8(model: nn.Sequential, engine: str = "x86") -> nn.Sequential:
    """Convert a calibrated 8-bit fake-quantized Sequential into torch's int8 CPU kernels.

    ``model`` comes from :func:`apply_fake_quant` with ``weight_bits=8``, ``activation_bits=8``
    and :func:`calibrate`. Each ``*_input`` quantization point fixes the output ``scale`` and
    ``zero_point`` of the layer before it, so the int8 model computes what the fake-quantized
    one simulates (up to rounding inside the kernels). Weights are stored as per-channel
    qint8; activations as quint8. ``engine`` selects torch's backend (``"x86"``, ``"fbgemm"``,
    ``"onednn"`` or ``"qnnpack"``) and is set globally (``torch.backends.quantized.engine``),
    since the packed weights are specific to it.

    torch 2.13 still ships these kernels but marks quantized tensor creation as deprecated;
    that one-time warning is silenced here (see the chapter notes).
    """
    nnq, nniq = _engine_modules()
    if engine not in torch.backends.quantized.supported_engines:
        raise ValueError(f"engine must be one of {torch.backends.quantized.supported_engines}, got {engine!r}")
    acts = [m for m in model.children() if isinstance(m, ActFakeQuant)]
    if not acts or any(not bool(a.enabled) or a.bits != 8 or a.signed for a in acts):
        raise ValueError("model must be calibrated with activation_bits=8 (run calibrate first)")
    quants = weight_quantizers(model)
    if any(not isinstance(q, WeightFakeQuant) or q.bits != 8 or not q.signed for _, q in quants.values()):
        raise ValueError("model must have signed 8-bit weight quantizers (apply_fake_quant(weight_bits=8))")
    torch.backends.quantized.engine = engine
    children = list(model.named_children())
    out: list[tuple[str, nn.Module]] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION)
        first = acts[0]
        out.append(("quantize", nnq.Quantize(float(first.scale), int(first.zero_point), torch.quint8)))
        for i, (name, module) in enumerate(children):
            if isinstance(module, ActFakeQuant) or isinstance(module, nn.Dropout):
                continue
            if not _weighted(module):
                if isinstance(module, nn.ReLU) and out[-1][0].endswith("+relu"):
                    continue
                out.append((name, module))
                continue
            following = [m for _, m in children[i + 1:]]
            relu = bool(following) and isinstance(following[0], nn.ReLU)
            act = next(m for m in following if isinstance(m, ActFakeQuant))
            out.append((f"{name}+relu" if relu else name,
                        _int8_layer(module, quants[name][1], float(act.scale), int(act.zero_point), relu, nnq, nniq)))
        out.append(("dequantize", nnq.DeQuantize()))
    return nn.Sequential(OrderedDict((n.replace("+", "_"), m) for n, m in out)).eval()


def _int8_layer(module, quant: WeightFakeQuant, scale: float, zero_point: int, relu: bool, nnq, nniq):
    w = module.parametrizations.weight.original.detach()
    qw = torch.quantize_per_channel(w, quant.effective_scale().detach().double(), quant.zero_point.long(), 0, torch.qint8)
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Linear):
        cls = nniq.LinearReLU if relu else nnq.Linear
        layer = cls(module.in_features, module.out_features)
    else:
        cls = nniq.ConvReLU2d if relu else nnq.Conv2d
        layer = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                    module.padding, module.dilation, module.groups, module.bias is not None)
    layer.set_weight_bias(qw, bias)
    layer.scale, layer.zero_point = scale, zero_point
    return layer
