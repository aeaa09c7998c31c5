"""Choosing the clipping range ``(lo, hi)`` of a tensor, and observing activations for it.

As in ``torch.ao``, observing is kept apart from transforming: a calibrator turns a tensor (or
the values an :class:`Observer` collected) into a range, which :func:`~.affine.qparams` turns
into ``scale`` and ``zero_point``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import validate
from .affine import _check_axis, fake_quantize, qparams, qrange

__all__ = ["CALIBRATIONS", "minmax_range", "percentile_range", "mse_range", "calibrated_range", "Observer"]

CALIBRATIONS = ("minmax", "percentile", "mse")


def _per_channel_view(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``x`` as ``(channels, elements)`` (one row if ``axis`` is None), refusing empty tensors."""
    validate.tensor(x, "x")
    axis = _check_axis(x, axis)
    return x.detach().reshape(1, -1) if axis is None else x.detach().movedim(axis, 0).reshape(x.shape[axis], -1)


def _squeeze(t: torch.Tensor, axis) -> torch.Tensor:
    """A per-tensor result as a 0-d tensor."""
    return t.reshape(()) if axis is None else t


def minmax_range(x: torch.Tensor, axis: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed range: ``(min, max)`` of ``x``, per tensor or per channel along ``axis``.

    Parameters
    ----------
    x
        A non-empty tensor.
    axis
        None (one range) or the channel axis (one range per channel).

    Returns
    -------
    tuple of torch.Tensor
        ``(lo, hi)``: 0-d, or 1-d of length ``x.shape[axis]``.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor.
    ValueError
        If ``x`` is empty or ``axis`` is out of range.

    References
    ----------
    jacob2018quantization
    """
    rows = _per_channel_view(x, axis)
    return _squeeze(rows.amin(1), axis), _squeeze(rows.amax(1), axis)


def percentile_range(x: torch.Tensor, percentile: float = 99.99, axis: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the tails: the ``100 - p`` and ``p`` percentiles of ``x`` (per tensor or along ``axis``).

    Parameters
    ----------
    x, axis
        As :func:`minmax_range`.
    percentile
        ``p`` in (50, 100].

    Returns
    -------
    tuple of torch.Tensor
        ``(lo, hi)``, as :func:`minmax_range`.

    Raises
    ------
    TypeError, ValueError
        As :func:`minmax_range`; ValueError for a ``percentile`` outside (50, 100].

    References
    ----------
    krishnamoorthi2018quantizing, wu2020integer
    """
    percentile = validate.number(percentile, "percentile", 50.0, 100.0, low_open=True)
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

    Parameters
    ----------
    x, axis
        As :func:`minmax_range`.
    bits, symmetric, signed
        The quantizer the range is for, as :func:`~.affine.qparams`.
    grid
        Number of candidate ranges, a positive int.

    Returns
    -------
    tuple of torch.Tensor
        ``(lo, hi)``, as :func:`minmax_range`.

    Raises
    ------
    TypeError, ValueError
        As :func:`minmax_range`; for a ``grid`` that is not a positive int.

    References
    ----------
    banner2019post, nagel2021white
    """
    grid = validate.integer(grid, "grid", 1)
    rows = _per_channel_view(x, axis)  # (channels, n)
    signed = symmetric if signed is None else signed
    qrange(bits, signed)
    lo, hi = rows.amin(1), rows.amax(1)
    best_err = torch.full_like(lo, float("inf"))
    best_lo, best_hi = lo.clone(), hi.clone()
    for a in torch.linspace(1.0 / grid, 1.0, grid):
        s, z = qparams(a * lo, a * hi, bits, symmetric, signed)
        err = (fake_quantize(rows, s, z, bits, signed, axis=0) - rows).pow(2).mean(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, a * lo, best_lo), torch.where(better, a * hi, best_hi)
    return _squeeze(best_lo, axis), _squeeze(best_hi, axis)


def calibrated_range(x: torch.Tensor, method: str = "minmax", bits: int = 8, symmetric: bool = False,
                     signed: bool | None = None, axis: int | None = None, percentile: float = 99.99):
    """Dispatch to :func:`minmax_range`, :func:`percentile_range` or :func:`mse_range` by name.

    Parameters
    ----------
    x, axis
        As :func:`minmax_range`.
    method
        One of :data:`CALIBRATIONS`: ``"minmax"``, ``"percentile"``, ``"mse"``.
    bits, symmetric, signed
        For ``"mse"``, as :func:`mse_range`.
    percentile
        For ``"percentile"``, as :func:`percentile_range`.

    Returns
    -------
    tuple of torch.Tensor
        ``(lo, hi)``.

    Raises
    ------
    TypeError, ValueError
        As the chosen calibrator; ValueError for an unknown ``method``.

    References
    ----------
    krishnamoorthi2018quantizing, nagel2021white
    """
    validate.choice(method, "method", CALIBRATIONS)
    if method == "minmax":
        return minmax_range(x, axis)
    if method == "percentile":
        return percentile_range(x, percentile, axis)
    return mse_range(x, bits, symmetric, signed, axis)


class Observer(nn.Module):
    """Identity module that records what passes through it, for activation calibration.

    Keeps the running min and max, and a deterministic subsample (at most ``max_samples``
    values, by stride) for percentile and MSE calibration.

    Parameters
    ----------
    max_samples
        The most values kept for :meth:`range`, a positive int.

    Raises
    ------
    TypeError, ValueError
        For a ``max_samples`` that is not a positive int; on :meth:`forward`, for an empty or
        non-tensor input.

    References
    ----------
    jacob2018quantization, krishnamoorthi2018quantizing
    """

    def __init__(self, max_samples: int = 1 << 18):
        super().__init__()
        self.max_samples = validate.integer(max_samples, "max_samples", 1)
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.samples: list[torch.Tensor] = []

    def reset(self) -> None:
        """Forget everything observed."""
        self.min_val, self.max_val = torch.tensor(float("inf")), torch.tensor(float("-inf"))
        self.samples = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Record ``x`` and return it unchanged."""
        v = validate.tensor(x, "x").detach().reshape(-1)
        self.min_val = torch.minimum(self.min_val, v.min())
        self.max_val = torch.maximum(self.max_val, v.max())
        stride = max(1, v.numel() // self.max_samples)
        self.samples.append(v[::stride].clone())
        return x

    def range(self, method: str = "minmax", bits: int = 8, signed: bool = False, percentile: float = 99.99):
        """The calibrated ``(lo, hi)`` of everything observed so far (see :func:`calibrated_range`).

        Raises
        ------
        RuntimeError
            If nothing has been observed.
        """
        validate.choice(method, "method", CALIBRATIONS)
        if not self.samples:
            raise RuntimeError("the observer has seen no data; run calibration batches first")
        if method == "minmax":
            return self.min_val.clone(), self.max_val.clone()
        values = torch.cat(self.samples)
        if values.numel() > self.max_samples:
            values = values[:: values.numel() // self.max_samples + 1]
        return calibrated_range(values, method, bits, signed=signed, percentile=percentile)
