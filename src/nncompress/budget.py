"""Helpers shared by several techniques: networks and ranks that fit a parameter budget.

:func:`rank_for_budget` is the one rule for choosing a low-rank factorization's rank so that its
two factors hold at most a fraction of the dense weights; :func:`budget_mlp` builds Chen et
al.'s equal-budget networks (hashed, low rank, random edges, narrow) for comparing HashedNets
with other compressions.

References: chen2015compressing, denton2014exploiting
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from numbers import Integral

import torch
from torch import nn

from . import parametrizations, validate

__all__ = ["rank_for_budget", "BUDGET_METHODS", "budget_mlp"]

BUDGET_METHODS = ("dense", "hashed", "lowrank", "random_edges", "small")


def _shapes(shapes) -> list[tuple[int, int]]:
    """``shapes`` as a non-empty list of ``(m, n)`` pairs of positive ints."""
    if isinstance(shapes, (str, bytes)) or not isinstance(shapes, Sequence):
        raise TypeError(f"shapes must be an (m, n) pair or a sequence of them, got {type(shapes).__name__}")
    if len(shapes) == 2 and all(isinstance(d, Integral) and not isinstance(d, bool) for d in shapes):
        shapes = [shapes]  # one (m, n) pair
    if len(shapes) == 0:
        raise ValueError("shapes must not be empty")
    pairs = []
    for i, shape in enumerate(shapes):
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) or len(shape) != 2:
            raise TypeError(f"shapes[{i}] must be an (m, n) pair of ints, got {shape!r}")
        pairs.append((validate.integer(shape[0], f"shapes[{i}][0]", 1), validate.integer(shape[1], f"shapes[{i}][1]", 1)))
    return pairs


def rank_for_budget(shapes: Sequence[int] | Sequence[Sequence[int]], fraction: float) -> int:
    """The largest rank whose factors fit ``fraction`` of the dense weights of ``shapes``.

    A rank-``r`` factorization of an ``(m, n)`` weight stores ``r (m + n)`` numbers. With one rank
    for all the layers, this is the largest ``r >= 1`` with
    ``r * sum(m + n) <= fraction * sum(m * n)``; 1 when even rank 1 exceeds the budget. The rank
    is not capped at ``min(m, n)``: callers that factorize cap it themselves. The inequality is
    evaluated exactly, with ``fraction`` read as the decimal it prints as: 0.7 is 7/10, not the
    binary float just below it, so a budget of 70 % of a 100 x 100 weight admits rank 35 (7,000
    numbers).

    Parameters
    ----------
    shapes
        One weight shape ``(m, n)``, or a sequence of them (the layers that share the rank).
    fraction
        The budget as a fraction of the dense weights, in (0, 1].

    Returns
    -------
    int
        The rank (>= 1).

    Raises
    ------
    TypeError
        If ``shapes`` is not a pair or a sequence of pairs of ints, or ``fraction`` not a number.
    ValueError
        For an empty ``shapes``, a dimension below 1, or ``fraction`` outside (0, 1].

    References: denton2014exploiting
    """
    pairs = _shapes(shapes)
    fraction = validate.number(fraction, "fraction", 0.0, 1.0, low_open=True)
    budget = Fraction(repr(float(fraction))) * sum(m * n for m, n in pairs)  # exact: no rounding
    return max(1, int(budget // sum(m + n for m, n in pairs)))


def _random_edges_(model: nn.Module, sizes: list[tuple[int, int]], factor: float,
                   generator: torch.Generator) -> None:
    """Attach to each ``fc<i>`` a fixed mask keeping ``round(factor * in * out)`` random weights."""
    from .pruning import Mask

    for i, (n_in, n_out) in enumerate(sizes, start=1):
        keep = torch.randperm(n_in * n_out, generator=generator)[: max(1, round(factor * n_in * n_out))]
        mask = torch.zeros(n_out * n_in, dtype=torch.bool)
        mask[keep] = True
        parametrizations.attach_(getattr(model, f"fc{i}"), "weight", Mask(mask.reshape(n_out, n_in)))


def _budget_layer(method: str, n_in: int, n_out: int, factor: float, rank: int, seed: int) -> nn.Module:
    """One ``hashed`` or ``lowrank`` layer of :func:`budget_mlp`, initialized from the global generator."""
    from .lowrank import LowRankLinear
    from .sharing import HashedLinear

    if method == "hashed":
        return HashedLinear(n_in, n_out, max(1, round(factor * n_in * n_out)), seed=seed)
    layer = LowRankLinear(torch.empty(n_out, rank), torch.empty(rank, n_in), torch.empty(n_out))
    layer.down.reset_parameters(), layer.up.reset_parameters()
    return layer


def budget_mlp(method: str, factor: float = 1.0, hidden: int = 1000, seed: int = 0) -> nn.Module:
    """An untrained ``784 -> hidden -> 10`` ReLU MLP whose weights fit ``factor`` of the dense ones.

    Built the way Chen et al. compare HashedNets with other compressions:

    - ``"dense"``: the full network (``factor`` is ignored);
    - ``"hashed"``: both layers are :class:`nncompress.sharing.HashedLinear` with
      ``round(factor * in * out)`` buckets;
    - ``"lowrank"``: both layers are products of two factors (``lowrank.LowRankLinear``) of one
      rank, :func:`rank_for_budget` of both shapes. A rank below 10 in the output layer is a
      bottleneck of its own, so a rank per layer in proportion to its size would starve it;
    - ``"random_edges"``: each layer keeps ``round(factor * in * out)`` randomly chosen weights
      (fixed ``pruning.Mask`` parametrizations), trained as usual;
    - ``"small"``: a dense network whose hidden layer is narrowed to ``int(factor * hidden)``.

    Biases (at most ``hidden + 10``) are not counted in the budget. The model is built from
    ``seed`` (the same arguments give the same initial weights and hashes) without changing
    torch's global random state.

    Parameters
    ----------
    method
        One of :data:`BUDGET_METHODS`.
    factor
        The weight budget as a fraction of the dense network's, in (0, 1].
    hidden
        The dense network's hidden width (>= 1).
    seed
        Seeds the initial weights, the random edges and the hashes.

    Returns
    -------
    nn.Module
        An ``nncompress.models.MLP`` whose ``fc1``/``fc2`` are replaced or masked as above.

    Raises
    ------
    TypeError
        If ``factor`` is not a number or ``hidden``/``seed`` not an int.
    ValueError
        For an unknown ``method``, ``factor`` outside (0, 1] or ``hidden < 1``.

    References: chen2015compressing
    """
    from .models import MLP

    validate.choice(method, "method", BUDGET_METHODS)
    factor = validate.number(factor, "factor", 0.0, 1.0, low_open=True)
    hidden = validate.integer(hidden, "hidden", 1)
    seed = validate.integer(seed, "seed", 0, 2**32 - 3)
    sizes = [(784, hidden), (hidden, 10)]  # (in, out) of fc1 and fc2
    with torch.random.fork_rng(devices=[]):
        generator = torch.manual_seed(seed)
        if method == "small":
            return MLP((max(1, int(factor * hidden)),))
        model = MLP((hidden,))
        if method == "random_edges":
            _random_edges_(model, sizes, factor, generator)
        elif method != "dense":
            rank = rank_for_budget([(n_out, n_in) for n_in, n_out in sizes], factor)
            for i, (n_in, n_out) in enumerate(sizes, start=1):
                setattr(model, f"fc{i}", _budget_layer(method, n_in, n_out, factor, rank, seed + i))
    return model
