"""CP and Tucker-2 decompositions of convolution kernels (through tensorly), in any model.

A ``(Cout, Cin, kh, kw)`` kernel is a 4-way tensor. CP turns one convolution into four thin ones;
Tucker-2 of the two channel modes into a 1x1, a smaller core and another 1x1 convolution.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

from .. import layers as _layers
from .. import validate
from .svd import energy_rank

__all__ = ["cp_conv", "tucker2_conv", "tucker2_ranks", "decompose_convs", "decompose_convs_"]


def _check_conv(conv) -> None:
    """``conv`` must be a plain Conv2d (no groups or dilation, numeric padding)."""
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1 or conv.dilation != (1, 1) or not isinstance(conv.padding, tuple):
        raise ValueError("conv must have groups=1, dilation=1 and numeric padding")


def _tensorly():
    """tensorly, imported on first use."""
    import tensorly as tl
    return tl


def _cp_factors(kernel: torch.Tensor, rank: int, seed: int, n_iter_max: int):
    """tensorly's CP-ALS of ``kernel``: ``(weights, (A, B, C, D))``."""
    from tensorly.decomposition import parafac
    with _tensorly().backend_context("pytorch"), warnings.catch_warnings():
        # for rank > kh or kw, tensorly completes the SVD initialization randomly and says so
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        return parafac(kernel, rank, n_iter_max=n_iter_max, init="svd", random_state=seed,
                       normalize_factors=True)


def cp_conv(conv: nn.Conv2d, rank: int, seed: int = 0, n_iter_max: int = 300) -> nn.Sequential:
    """Four small convolutions from a rank-``rank`` CP decomposition of ``conv``'s kernel.

    ``K[o, i, h, w] ~ sum_r A[o, r] B[i, r] C[h, r] D[w, r]`` becomes a 1x1 conv ``Cin -> R``, a
    depthwise ``kh x 1`` conv, a depthwise ``1 x kw`` conv and a 1x1 conv ``R -> Cout`` (with the
    bias). Each component's weight is spread evenly over its four factors: with one factor
    carrying all of it, their scales differ by orders of magnitude and fine-tuning diverges.

    Parameters
    ----------
    conv
        A Conv2d with ``groups=1``, ``dilation=1`` and numeric padding; left unchanged.
    rank
        The CP rank ``R >= 1``.
    seed
        Seeds tensorly's ``parafac`` (CP-ALS), which completes its initialization randomly.
    n_iter_max
        ALS iterations.

    Returns
    -------
    nn.Sequential
        The four convolutions.

    Raises
    ------
    TypeError
        If ``conv`` is not a Conv2d, or ``rank``/``seed`` not ints.
    ValueError
        For grouped or dilated convolutions, string padding, or ``rank < 1``.

    References
    ----------
    lebedev2015speeding, kolda2009tensor, kossaifi2019tensorly
    """
    _check_conv(conv)
    rank = validate.integer(rank, "rank", 1)
    seed = validate.integer(seed, "seed", 0)
    kernel = conv.weight.detach().double()  # (Cout, Cin, kh, kw)
    weights, (a, b, c, d) = _cp_factors(kernel, rank, seed, validate.integer(n_iter_max, "n_iter_max", 1))
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    cout, cin, kh, kw = kernel.shape
    layers = nn.Sequential(
        nn.Conv2d(cin, rank, 1, bias=False),
        nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), groups=rank, bias=False),
        nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), groups=rank, bias=False),
        nn.Conv2d(rank, cout, 1, bias=conv.bias is not None),
    )
    root = weights.abs().pow(0.25)  # (R,)
    with torch.no_grad():
        layers[0].weight.copy_((b * root).T[:, :, None, None])  # (R, Cin, 1, 1)
        layers[1].weight.copy_((c * root).T[:, None, :, None])  # (R, 1, kh, 1)
        layers[2].weight.copy_((d * root).T[:, None, None, :])  # (R, 1, 1, kw)
        layers[3].weight.copy_((a * root * weights.sign())[:, :, None, None])  # (Cout, R, 1, 1)
        if conv.bias is not None:
            layers[3].bias.copy_(conv.bias)
    return layers


def tucker2_ranks(conv: nn.Conv2d, energy: float) -> tuple[int, int]:
    """Output and input channel ranks keeping ``energy`` of each channel unfolding's spectrum.

    Parameters
    ----------
    conv
        A plain Conv2d.
    energy
        The fraction of squared singular values to keep, in (0, 1] (:func:`energy_rank`).

    Returns
    -------
    tuple of int
        ``(r_out, r_in)``, to pass to :func:`tucker2_conv`.

    Raises
    ------
    TypeError, ValueError
        As :func:`tucker2_conv` for ``conv``; ValueError for ``energy`` outside (0, 1].

    References
    ----------
    kim2016compression
    """
    _check_conv(conv)
    k = conv.weight.detach().double()
    return (energy_rank(torch.linalg.svdvals(k.flatten(1)), energy),
            energy_rank(torch.linalg.svdvals(k.transpose(0, 1).flatten(1)), energy))


def tucker2_conv(conv: nn.Conv2d, ranks: tuple[int, int]) -> nn.Sequential:
    """1x1 ``Cin -> r_in``, a ``kh x kw`` core ``r_in -> r_out`` and 1x1 ``r_out -> Cout`` convolutions.

    The factors come from tensorly's ``partial_tucker`` of the kernel on its two channel modes:
    ``K ~ G x_0 U_out x_1 U_in`` (Tucker-2, SVD-initialized, so deterministic).

    Parameters
    ----------
    conv
        A Conv2d with ``groups=1``, ``dilation=1`` and numeric padding; left unchanged.
    ranks
        ``(r_out, r_in)`` with ``1 <= r_out <= Cout`` and ``1 <= r_in <= Cin``.

    Returns
    -------
    nn.Sequential
        The three convolutions (the last one has ``conv``'s bias).

    Raises
    ------
    TypeError
        If ``conv`` is not a Conv2d.
    ValueError
        For an unsupported convolution, or ``ranks`` not such a pair.

    References
    ----------
    kim2016compression, tucker1966some, kossaifi2019tensorly
    """
    _check_conv(conv)
    cout, cin, kh, kw = conv.weight.shape
    if not isinstance(ranks, (tuple, list)) or len(ranks) != 2:
        raise ValueError(f"ranks must be a pair (r_out, r_in), got {ranks!r}")
    r_out, r_in = validate.integer(ranks[0], "ranks[0]", 1, cout), validate.integer(ranks[1], "ranks[1]", 1, cin)
    from tensorly.decomposition import partial_tucker
    with _tensorly().backend_context("pytorch"):
        (core, (u_out, u_in)), _ = partial_tucker(conv.weight.detach().double(), [r_out, r_in], modes=[0, 1],
                                                  init="svd", n_iter_max=100, tol=1e-8)
    layers = nn.Sequential(
        nn.Conv2d(cin, r_in, 1, bias=False),
        nn.Conv2d(r_in, r_out, (kh, kw), stride=conv.stride, padding=conv.padding, bias=False),
        nn.Conv2d(r_out, cout, 1, bias=conv.bias is not None),
    )
    with torch.no_grad():
        layers[0].weight.copy_(u_in.T[:, :, None, None])  # (r_in, Cin, 1, 1)
        layers[1].weight.copy_(core)  # (r_out, r_in, kh, kw)
        layers[2].weight.copy_(u_out[:, :, None, None])  # (Cout, r_out, 1, 1)
        if conv.bias is not None:
            layers[2].bias.copy_(conv.bias)
    return layers


def _decomposed(model: nn.Module, method: str, ranks: Mapping, seed: int) -> dict[str, nn.Sequential]:
    """The replacement of each Conv2d that ``ranks`` selects."""
    validate.module(model)
    validate.choice(method, "method", ("cp", "tucker2"))
    seed = validate.integer(seed, "seed", 0)
    modules = dict(model.named_modules())
    chosen = _layers.select_values(model, ranks, types=(nn.Conv2d,))
    return {name: cp_conv(modules[name], rank, seed) if method == "cp" else tucker2_conv(modules[name], rank)
            for name, rank in chosen.items()}


def decompose_convs(model: nn.Module, method: str, ranks: Mapping, seed: int = 0) -> nn.Module:
    """A new model with Conv2d layers of ``model`` replaced by CP or Tucker-2 decompositions.

    Parameters
    ----------
    model
        Any module; it is left unchanged.
    method
        ``"cp"`` (:func:`cp_conv`) or ``"tucker2"`` (:func:`tucker2_conv`).
    ranks
        ``{name, glob pattern or type: rank}`` (:func:`nncompress.layers.select_values`): an int
        for CP, a pair ``(r_out, r_in)`` for Tucker-2.
    seed
        Seeds the CP decompositions.

    Returns
    -------
    nn.Module
        The decomposed copy.

    Raises
    ------
    TypeError
        If a key names a layer that is not a Conv2d, or for a bad rank type.
    ValueError
        For an unknown ``method``, a key that selects nothing, or ranks out of range.

    References
    ----------
    lebedev2015speeding, kim2016compression
    """
    return _layers.replace(model, _decomposed(model, method, ranks, seed))


def decompose_convs_(model: nn.Module, method: str, ranks: Mapping, seed: int = 0) -> nn.Module:
    """:func:`decompose_convs` in place: replaces the convolutions inside ``model``.

    Parameters, Raises and References are those of :func:`decompose_convs`.

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    for name, layer in _decomposed(model, method, ranks, seed).items():
        _layers.replace_(model, name, layer)
    return model
