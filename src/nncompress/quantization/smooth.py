"""SmoothQuant's migration: move activation outliers into the weights, exactly, before quantizing.

A Linear layer computes ``y = x W^T``. For any positive per-feature scale ``s``,
``y = (x / s) (W diag(s))^T``: dividing input feature ``j`` by ``s_j`` and multiplying column
``j`` of the weight by it changes nothing in float arithmetic. SmoothQuant (Xiao et al., 2023)
chooses ``s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha)``, so that a feature with outliers is
shrunk and its weights grown until both are moderately hard to quantize: with ``alpha = 0.5``
the maxima of ``x_j / s_j`` and of ``W_:j * s_j`` become equal, ``sqrt(max|x_j| max|W_:j|)``.

In the models SmoothQuant targets (pre-norm transformers) the division folds into the layer
normalization before the layer, for free. In post-norm BERT a normalization's output also feeds
the residual connection, so there the division stays an explicit elementwise product
(:class:`SmoothedLinear`), a small cost next to the matrix product.

References: xiao2023smoothquant
"""

from __future__ import annotations

import torch
from torch import nn

from .. import layers as L
from .. import validate

__all__ = ["smoothing_scales", "SmoothedLinear", "smooth_linear", "apply_smoothing"]


def smoothing_scales(act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's per-feature scales ``s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha)``.

    Parameters
    ----------
    act_absmax
        ``(features,)``: the largest ``|x_j|`` seen on calibration inputs.
    weight_absmax
        ``(features,)``: the largest ``|W_ij|`` of each input column (over all the layers that
        read the same input).
    alpha
        The migration strength, in [0, 1]: 0 leaves the activations alone, 1 moves all their
        range into the weights.

    Returns
    -------
    torch.Tensor
        float32 ``(features,)``, positive; 1 for a feature that is zero everywhere.

    Raises
    ------
    ValueError
        For tensors of different lengths or an ``alpha`` outside [0, 1].

    References
    ----------
    xiao2023smoothquant
    """
    validate.tensor(act_absmax, "act_absmax", dim=1)
    validate.tensor(weight_absmax, "weight_absmax", dim=1)
    if act_absmax.shape != weight_absmax.shape:
        raise ValueError(f"act_absmax and weight_absmax must have the same length, got {len(act_absmax)} "
                         f"and {len(weight_absmax)}")
    alpha = validate.number(alpha, "alpha", 0.0, 1.0)
    a, w = act_absmax.detach().float(), weight_absmax.detach().float()
    scales = a.pow(alpha) / w.pow(1 - alpha)
    dead = (a == 0) | (w == 0) | ~torch.isfinite(scales)
    return torch.where(dead, torch.ones_like(scales), scales)


class SmoothedLinear(nn.Module):
    """``linear(x / scales)``: a Linear layer whose weight columns were multiplied by ``scales``.

    Parameters
    ----------
    linear
        The layer, its weight already smoothed (``W diag(s)``).
    scales
        ``(in_features,)`` positive scales, kept as a buffer.
    """

    def __init__(self, linear: nn.Linear, scales: torch.Tensor):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        validate.tensor(scales, "scales", dim=1)
        if len(scales) != linear.in_features or bool((scales <= 0).any()):
            raise ValueError(f"scales must be {linear.in_features} positive numbers")
        self.linear = linear
        self.register_buffer("inverse", 1.0 / scales.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inverse)


def smooth_linear(linear: nn.Linear, act_absmax: torch.Tensor, alpha: float = 0.5) -> SmoothedLinear:
    """A :class:`SmoothedLinear` computing the same function as ``linear``, with SmoothQuant's scales.

    Parameters
    ----------
    linear
        The layer (left untouched).
    act_absmax
        ``(in_features,)``: the largest ``|x_j|`` on calibration inputs
        (:attr:`nncompress.calibration.InputStats.absmax`).
    alpha
        The migration strength, as in :func:`smoothing_scales`.

    Returns
    -------
    SmoothedLinear
        A new module.

    References
    ----------
    xiao2023smoothquant
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    scales = smoothing_scales(act_absmax, linear.weight.detach().abs().amax(0), alpha)
    smoothed = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None)
    with torch.no_grad():
        smoothed.weight.copy_(linear.weight * scales[None, :])
        if linear.bias is not None:
            smoothed.bias.copy_(linear.bias)
    return SmoothedLinear(smoothed, scales)


def apply_smoothing(model: nn.Module, stats: dict, alpha: float = 0.5, layers: L.Layers = None) -> nn.Module:
    """A copy of ``model`` with the selected Linear layers replaced by :func:`smooth_linear`.

    Parameters
    ----------
    model
        Any module (left untouched).
    stats
        Layer name mapped to its :class:`nncompress.calibration.InputStats` (or anything with an
        ``absmax``), from :func:`nncompress.calibration.input_statistics` on ``model``.
    alpha
        The migration strength.
    layers
        A selection of Linear layers; all those in ``stats`` when None.

    Returns
    -------
    nn.Module
        The smoothed copy: the same function in float arithmetic.

    Raises
    ------
    ValueError
        If a selected layer has no statistics.

    References
    ----------
    xiao2023smoothquant
    """
    validate.module(model)
    chosen = L.select(model, layers if layers is not None else list(stats), types=(nn.Linear,))
    missing = sorted(set(chosen) - set(stats))
    if missing:
        raise ValueError(f"stats has no entry for layers {missing[:5]}")
    return L.replace(model, {name: smooth_linear(layer, stats[name].absmax, alpha) for name, layer in chosen.items()})
