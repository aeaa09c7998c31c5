"""Kronecker-factored Linear layers: the nearest sum of Kronecker products, in any model.

``A kron B`` of an ``(m1, n1)`` and an ``(m2, n2)`` matrix is ``(m1 m2, n1 n2)`` but described by
``m1 n1 + m2 n2`` numbers, and applied as ``A X B^T`` without ever being formed.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .. import layers as _layers
from .. import validate
from .svd import _check_matrix, svd_factors

__all__ = ["kronecker_rearrange", "nearest_kronecker", "KroneckerLinear", "kronecker_linear",
           "factorize_kronecker", "factorize_kronecker_"]


def _check_shape(shape, name: str) -> tuple[int, int]:
    """``shape`` as a pair of ints >= 1."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 2:
        raise TypeError(f"{name} must be a pair of ints (rows, columns), got {shape!r}")
    return validate.integer(shape[0], f"{name}[0]", 1), validate.integer(shape[1], f"{name}[1]", 1)


def _check_kron_shapes(weight_shape, shape_a, shape_b) -> tuple[tuple[int, int], tuple[int, int]]:
    """The checked factor shapes, whose products must give ``weight_shape``."""
    (m, n), (m1, n1), (m2, n2) = weight_shape, _check_shape(shape_a, "shape_a"), _check_shape(shape_b, "shape_b")
    if m1 * m2 != m or n1 * n2 != n:
        raise ValueError(f"shape_a {(m1, n1)} and shape_b {(m2, n2)} do not factor a ({m}, {n}) weight: "
                         f"need m1*m2 = {m} and n1*n2 = {n}")
    return (m1, n1), (m2, n2)


def kronecker_rearrange(weight: torch.Tensor, shape_a: tuple[int, int], shape_b: tuple[int, int]) -> torch.Tensor:
    """Van Loan and Pitsianis' rearrangement ``R(W)``, of shape ``(m1 n1, m2 n2)``.

    Each ``m2 x n2`` block ``W_(p,i)`` of ``W`` becomes row ``p n1 + i``, so that
    ``R(A kron B) = vec(A) vec(B)^T``: Kronecker approximation becomes low-rank approximation.

    Parameters
    ----------
    weight
        An ``(m1 m2, n1 n2)`` tensor.
    shape_a, shape_b
        ``(m1, n1)`` and ``(m2, n2)``.

    Returns
    -------
    torch.Tensor
        ``R(W)``.

    Raises
    ------
    TypeError, ValueError
        If ``weight`` is not a non-empty 2-d tensor, or the shapes do not factor it.

    References
    ----------
    vanloan1993approximation
    """
    _check_matrix(weight)
    (m1, n1), (m2, n2) = _check_kron_shapes(weight.shape, shape_a, shape_b)
    return weight.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)


def nearest_kronecker(weight: torch.Tensor, shape_a: tuple[int, int], shape_b: tuple[int, int],
                      rank: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors minimizing ``||W - sum_k A_k kron B_k||_F``, by the truncated SVD of ``R(W)``.

    The error is the tail of the singular values of :func:`kronecker_rearrange`.

    Parameters
    ----------
    weight
        An ``(m1 m2, n1 n2)`` tensor.
    shape_a, shape_b
        ``(m1, n1)`` and ``(m2, n2)``.
    rank
        The number of Kronecker products, in ``[1, min(m1 n1, m2 n2)]``.

    Returns
    -------
    tuple of torch.Tensor
        ``A`` of shape ``(rank, m1, n1)`` and ``B`` of shape ``(rank, m2, n2)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`kronecker_rearrange`, and for a rank out of range.

    References
    ----------
    vanloan1993approximation, edalati2022kronecker
    """
    r = kronecker_rearrange(weight.detach(), shape_a, shape_b)
    a, b = svd_factors(r, rank)  # (m1 n1, rank), (rank, m2 n2)
    return a.T.reshape(rank, *shape_a), b.reshape(rank, *shape_b)


class KroneckerLinear(nn.Module):
    """``y = (sum_k A_k kron B_k) x + bias``, computed as ``sum_k A_k X B_k^T``.

    ``x`` of ``n1 n2`` features is viewed as an ``n1 x n2`` matrix ``X`` (row-major); the output's
    ``m1 m2`` features are the row-major flattening of ``sum_k A_k X B_k^T``. Costs
    ``r n1 m2 (n2 + m1)`` multiply-adds per input against ``m1 m2 n1 n2`` for the dense layer.

    Parameters
    ----------
    a
        ``(rank, m1, n1)`` (or ``(m1, n1)`` for rank 1).
    b
        ``(rank, m2, n2)`` (or ``(m2, n2)``).
    bias
        ``(m1 m2,)`` or None.

    Raises
    ------
    ValueError
        If the factors' shapes do not fit together.

    References
    ----------
    edalati2022kronecker
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if a.dim() == 2:
            a, b = a[None], b[None]
        if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must be (rank, m1, n1) and (rank, m2, n2), got {tuple(a.shape)}, {tuple(b.shape)}")
        self.a = nn.Parameter(a.detach().clone())  # (r, m1, n1)
        self.b = nn.Parameter(b.detach().clone())  # (r, m2, n2)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.in_features = a.shape[2] * b.shape[2]
        self.out_features = a.shape[1] * b.shape[1]

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(m1 m2, n1 n2)`` weight ``sum_k A_k kron B_k`` (for checking; forward never builds it)."""
        return sum(torch.kron(a, b) for a, b in zip(self.a, self.b))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, m1, n1 = self.a.shape
        _, m2, n2 = self.b.shape
        xm = x.reshape(-1, n1, n2)  # (batch, n1, n2)
        # two matrix products with the r terms side by side, rather than r small ones each:
        t = xm @ self.b.permute(2, 0, 1).reshape(n2, r * m2)  # (batch, n1, r m2): X B_k^T for every k
        t = t.view(-1, n1, r, m2).transpose(1, 2).reshape(-1, r * n1, m2)  # (batch, r n1, m2)
        y = self.a.transpose(0, 1).reshape(m1, r * n1) @ t  # (batch, m1, m2) = sum_k A_k X B_k^T
        y = y.reshape(*x.shape[:-1], m1 * m2)
        return y if self.bias is None else y + self.bias


def kronecker_linear(linear: nn.Linear, shape_a: tuple[int, int], shape_b: tuple[int, int], rank: int = 1
                     ) -> KroneckerLinear:
    """The nearest rank-``rank`` Kronecker factorization of ``linear`` (:func:`nearest_kronecker`).

    Parameters
    ----------
    linear
        An ``nn.Linear`` with an ``(m1 m2, n1 n2)`` weight; left unchanged.
    shape_a, shape_b
        ``(m1, n1)`` and ``(m2, n2)``.
    rank
        The number of Kronecker products.

    Returns
    -------
    KroneckerLinear
        The factorized layer, with ``linear``'s bias.

    Raises
    ------
    TypeError
        If ``linear`` is not an ``nn.Linear``.
    ValueError
        As :func:`nearest_kronecker`.

    References
    ----------
    vanloan1993approximation, edalati2022kronecker
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    a, b = nearest_kronecker(linear.weight, shape_a, shape_b, rank)
    return KroneckerLinear(a, b, None if linear.bias is None else linear.bias.detach())


def _kronecker_layers(model: nn.Module, shapes: Mapping, rank: int) -> dict[str, KroneckerLinear]:
    """The replacement of each Linear layer that ``shapes`` selects."""
    validate.module(model)
    modules = dict(model.named_modules())
    chosen = _layers.select_values(model, shapes, types=(nn.Linear,))
    out = {}
    for name, pair in chosen.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"shapes[{name!r}] must be a pair (shape_a, shape_b), got {pair!r}")
        out[name] = kronecker_linear(modules[name], pair[0], pair[1], rank)
    return out


def factorize_kronecker(model: nn.Module, shapes: Mapping, rank: int = 1) -> nn.Module:
    """A new model with Linear layers of ``model`` replaced by :class:`KroneckerLinear` layers.

    Parameters
    ----------
    model
        Any module; it is left unchanged.
    shapes
        ``{name, glob pattern or type: (shape_a, shape_b)}`` (:func:`nncompress.layers.select_values`),
        e.g. ``{"ffn.fc1": ((8, 4), (8, 8))}`` for a ``(64, 32)`` weight.
    rank
        The number of Kronecker products per layer.

    Returns
    -------
    nn.Module
        The factorized copy.

    Raises
    ------
    TypeError
        If a key names a layer that is not Linear, or a value is not a pair of shapes.
    ValueError
        If a key selects nothing, shapes do not factor a layer's weight, or ``rank`` is out of range.

    References
    ----------
    vanloan1993approximation, edalati2022kronecker
    """
    return _layers.replace(model, _kronecker_layers(model, shapes, rank))


def factorize_kronecker_(model: nn.Module, shapes: Mapping, rank: int = 1) -> nn.Module:
    """:func:`factorize_kronecker` in place: replaces the layers inside ``model``.

    Parameters, Raises and References are those of :func:`factorize_kronecker`.

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    for name, layer in _kronecker_layers(model, shapes, rank).items():
        _layers.replace_(model, name, layer)
    return model
