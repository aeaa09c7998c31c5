"""HashedNets: a layer whose virtual weight reads a few shared values through a hash.

References: chen2015compressing, weinberger2009feature
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .. import validate

__all__ = ["hash_indices", "HashedLinear"]


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on uint64 arrays: a fast, well-mixed, deterministic hash."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_indices(shape: Sequence[int], buckets: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """HashedNets' hashes for a virtual weight of ``shape``: bucket indices and signs.

    Entry ``(i, j)`` reads bucket ``h(i, j) mod buckets`` with sign ``xi(i, j)`` in ``{-1, +1}``;
    both come from splitmix64 of the entry's flat position and ``seed``, so they are recomputed,
    never stored.

    Parameters
    ----------
    shape
        The virtual weight's shape, e.g. ``(out, in)``.
    buckets
        The number of shared values (>= 1).
    seed
        An int in ``[0, 2**32)``; different seeds give independent hashes.

    Returns
    -------
    index : torch.Tensor
        int64 of ``shape``, entries in ``[0, buckets)``.
    sign : torch.Tensor
        float32 of ``shape``, entries in ``{-1, +1}``.

    Raises
    ------
    TypeError
        If ``buckets`` or ``seed`` is not an int.
    ValueError
        If ``buckets < 1`` or ``seed`` is outside ``[0, 2**32)``.

    References: chen2015compressing
    """
    buckets = validate.integer(buckets, "buckets", 1)
    seed = validate.integer(seed, "seed", 0, 2**32 - 1)
    n = int(np.prod(shape))
    keys = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x100000000)
    h = _splitmix64(keys)
    index = (h % np.uint64(buckets)).astype(np.int64)
    sign = np.where(_splitmix64(h) >> np.uint64(63), 1.0, -1.0).astype(np.float32)
    return torch.from_numpy(index).reshape(tuple(shape)), torch.from_numpy(sign).reshape(tuple(shape))


class _HashedGather(torch.autograd.Function):
    """``sign * weight[index]``, whose backward adds each entry's gradient into its bucket with
    ``index_add_``: the same gradient as autograd's indexing, about three times faster on CPU."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, index: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index, sign)
        ctx.buckets = weight.shape[0]
        return sign * weight[index]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        index, sign = ctx.saved_tensors
        flat = (grad * sign).reshape(-1)
        return torch.zeros(ctx.buckets, dtype=grad.dtype).index_add_(0, index.reshape(-1), flat), None, None


class HashedLinear(nn.Module):
    """A Linear layer whose ``(out, in)`` virtual weight is hashed into ``buckets`` shared values.

    ``W[i, j] = sign(i, j) * weight[index(i, j)]`` with the hashes of :func:`hash_indices`. Only
    ``weight`` (``buckets`` values) and the bias are parameters and appear in the state dict; the
    index and sign are recomputed from ``seed``. Initialized uniformly in ``±in_features**-0.5``,
    as ``nn.Linear``, from torch's global generator.

    Parameters
    ----------
    in_features, out_features
        The virtual weight's shape is ``(out_features, in_features)``.
    buckets
        The number of stored weights.
    bias
        Whether the layer has a bias.
    seed
        The hash seed, in ``[0, 2**32)``.

    Raises
    ------
    TypeError, ValueError
        For a non-int or non-positive size, ``buckets`` or ``seed`` (see :func:`hash_indices`).

    References: chen2015compressing
    """

    def __init__(self, in_features: int, out_features: int, buckets: int, bias: bool = True, seed: int = 0):
        super().__init__()
        in_features = validate.integer(in_features, "in_features", 1)
        out_features = validate.integer(out_features, "out_features", 1)
        self.in_features, self.out_features, self.buckets, self.seed = in_features, out_features, buckets, seed
        index, sign = hash_indices((out_features, in_features), buckets, seed)
        self.register_buffer("index", index, persistent=False)
        self.register_buffer("sign", sign, persistent=False)
        bound = in_features ** -0.5  # nn.Linear's default initialization range
        self.weight = nn.Parameter(torch.empty(buckets).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound)) if bias else None

    def virtual_weight(self) -> torch.Tensor:
        """The ``(out, in)`` weight ``sign * weight[index]``; its gradient sums into the buckets."""
        return _HashedGather.apply(self.weight, self.index, self.sign.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.virtual_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, buckets={self.buckets}, seed={self.seed}"
