"""Masks from tensors: which weights or channels to remove, and when (pure functions).

Sparsity is always the fraction of entries *removed*; a mask holds 1 (kept) and 0 (pruned).

References: han2015learning, li2017pruning, zhu2017prune
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch

from .. import validate

__all__ = ["magnitude_mask", "global_magnitude_masks", "channel_norms", "ln_structured_mask",
           "polynomial_sparsity"]


def check_norm(n) -> float:
    """The order ``n`` of an L_n norm: a positive number or ``math.inf``.

    Parameters
    ----------
    n
        What the caller passed.

    Returns
    -------
    float
        ``n``.

    Raises
    ------
    TypeError, ValueError
        If ``n`` is not a positive number (or infinity).
    """
    if isinstance(n, bool) or not isinstance(n, Real):
        raise TypeError(f"n (the order of the L_n norm) must be a positive number or math.inf, "
                        f"got {type(n).__name__} {n!r}")
    if math.isnan(n) or not n > 0:
        raise ValueError(f"n (the order of the L_n norm) must be a positive number or math.inf, got {n!r}")
    return float(n)


def _count(sparsity: float, total: int) -> int:
    """How many of ``total`` entries to prune: round(sparsity * total), as torch.nn.utils.prune does."""
    return round(sparsity * total)


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Mask removing the ``round(sparsity * weight.numel())`` entries of smallest ``|weight|``.

    Ties are broken by ``torch.topk``, as in ``torch.nn.utils.prune.l1_unstructured``.

    Parameters
    ----------
    weight
        A non-empty tensor of any shape.
    sparsity
        The fraction of entries to remove, in [0, 1).

    Returns
    -------
    torch.Tensor
        A float32 tensor of ``weight``'s shape holding 0 (pruned) and 1 (kept).

    Raises
    ------
    TypeError
        If ``weight`` is not a tensor or ``sparsity`` not a number.
    ValueError
        If ``weight`` is empty or ``sparsity`` lies outside [0, 1).

    References
    ----------
    han2015learning
    """
    validate.tensor(weight, "weight")
    k = _count(validate.fraction(sparsity, "sparsity"), weight.numel())
    mask = torch.ones_like(weight, dtype=torch.float32)
    if k:
        smallest = torch.topk(weight.detach().abs().flatten(), k, largest=False).indices
        mask.view(-1)[smallest] = 0.0
    return mask


def global_magnitude_masks(weights: Sequence[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Masks removing the smallest-magnitude ``sparsity`` fraction of *all* the weights together.

    Each tensor ends up with its own sparsity, set by how its magnitudes compare with the
    others'. Equivalent to ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``.

    Parameters
    ----------
    weights
        A sequence of non-empty tensors.
    sparsity
        The fraction of all their entries to remove, in [0, 1).

    Returns
    -------
    list of torch.Tensor
        One float mask per tensor, of its shape.

    Raises
    ------
    TypeError
        If an entry of ``weights`` is not a tensor, or ``sparsity`` not a number.
    ValueError
        If ``weights`` is empty or ``sparsity`` lies outside [0, 1).

    References
    ----------
    han2015learning
    """
    weights = list(weights)
    if not weights:
        raise ValueError("weights must hold at least one tensor")
    for i, w in enumerate(weights):
        validate.tensor(w, f"weights[{i}]")
    flat = torch.cat([w.detach().flatten() for w in weights])  # (total,)
    mask = magnitude_mask(flat, sparsity)
    return [m.view_as(w) for m, w in zip(torch.split(mask, [w.numel() for w in weights]), weights)]


def channel_norms(weight: torch.Tensor, n: float = 2, dim: int = 0) -> torch.Tensor:
    """The L_n norm of each slice of ``weight`` along ``dim`` (of each output filter for dim 0).

    Parameters
    ----------
    weight
        A non-empty tensor, e.g. a Linear ``(out, in)`` or Conv2d ``(out, in, kh, kw)`` weight.
    n
        The order of the norm: a positive number or ``math.inf``.
    dim
        The dimension whose slices are measured.

    Returns
    -------
    torch.Tensor
        Shape ``(weight.shape[dim],)``.

    Raises
    ------
    TypeError
        If ``weight`` is not a tensor, ``n`` not a number or ``dim`` not an int.
    ValueError
        If ``n`` is not positive or ``dim`` is not a dimension of ``weight``.

    References
    ----------
    li2017pruning
    """
    validate.tensor(weight, "weight")
    n = check_norm(n)
    dim = validate.integer(dim, "dim", -weight.dim(), weight.dim() - 1)
    dims = [d for d in range(weight.dim()) if d != dim % weight.dim()]
    return torch.linalg.vector_norm(weight.detach().float(), ord=n, dim=dims)  # (weight.shape[dim],)


def ln_structured_mask(weight: torch.Tensor, sparsity: float, n: float = 2, dim: int = 0) -> torch.Tensor:
    """Mask removing the ``round(sparsity * weight.shape[dim])`` slices along ``dim`` of smallest L_n norm.

    Whole filters or output units for ``dim=0``, input channels for ``dim=1``. Matches
    ``torch.nn.utils.prune.ln_structured``.

    Parameters
    ----------
    weight, n, dim
        As :func:`channel_norms`.
    sparsity
        The fraction of slices to remove, in [0, 1).

    Returns
    -------
    torch.Tensor
        A float32 mask of ``weight``'s shape, constant along every slice.

    Raises
    ------
    TypeError, ValueError
        As :func:`channel_norms`, and for a ``sparsity`` outside [0, 1).

    References
    ----------
    li2017pruning
    """
    sparsity = validate.fraction(sparsity, "sparsity")
    norms = channel_norms(weight, n, dim)
    keep = len(norms) - _count(sparsity, len(norms))
    shape = [1] * weight.dim()
    shape[dim] = -1
    kept = torch.zeros_like(norms, dtype=torch.float32)
    kept[torch.topk(norms, keep, largest=True).indices] = 1.0
    return kept.view(shape).expand_as(weight).clone()


def polynomial_sparsity(step: int, final_sparsity: float, begin_step: int, end_step: int,
                        initial_sparsity: float = 0.0, power: float = 3) -> float:
    """Zhu and Gupta's gradual schedule: the sparsity to reach at training step ``step``.

    .. math:: s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{t_1 - t_0}\\right)^{p}, \\quad t_0 \\le t \\le t_1

    with ``s_i`` before ``t_0 = begin_step`` and ``s_f`` after ``t_1 = end_step``.

    Parameters
    ----------
    step
        The training step ``t``.
    final_sparsity, initial_sparsity
        ``s_f`` and ``s_i``, in [0, 1).
    begin_step, end_step
        ``t_0`` and ``t_1``, with ``0 <= t_0 < t_1``.
    power
        The exponent ``p`` (3 in Zhu and Gupta), a positive number.

    Returns
    -------
    float
        ``s_t``.

    Raises
    ------
    TypeError
        For a non-numeric sparsity or power, or steps that are not ints.
    ValueError
        For sparsities outside [0, 1), ``begin_step < end_step`` failing, or ``power <= 0``.

    References
    ----------
    zhu2017prune
    """
    step = validate.integer(step, "step")
    final_sparsity = validate.fraction(final_sparsity, "final_sparsity")
    initial_sparsity = validate.fraction(initial_sparsity, "initial_sparsity")
    begin_step = validate.integer(begin_step, "begin_step", 0)
    validate.integer(end_step, "end_step")
    if not begin_step < end_step:
        raise ValueError(f"need begin_step < end_step, got {begin_step} and {end_step}")
    power = validate.number(power, "power", 0, low_open=True)
    progress = min(max((step - begin_step) / (end_step - begin_step), 0.0), 1.0)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - progress) ** power
