"""Sparse storage and kernels: a Linear layer kept in CSR format, and a model converted to it.

References: han2015learning
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .. import layers as L
from .. import parametrizations, validate
from .masks import Mask

__all__ = ["SparseLinear", "to_sparse"]


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored in CSR format and applied with a sparse kernel.

    ``forward`` computes ``(W x^T)^T + b`` with ``torch.sparse.mm``, for inputs of any number of
    leading dimensions (a transformer's ``(batch, tokens, features)``); the ``state_dict`` holds the
    CSR arrays (values, column indices, row offsets) instead of the dense matrix.

    Parameters
    ----------
    weight
        The dense weight ``(out, in)``; its zeros are not stored.
    bias
        ``(out,)`` or None.

    Raises
    ------
    TypeError
        If ``weight`` is not a floating-point tensor.
    ValueError
        If ``weight`` is not 2-d, or ``bias`` does not have ``out`` entries.

    References
    ----------
    han2015learning
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        validate.tensor(weight, "weight", dim=2, floating=True)
        if bias is not None and tuple(validate.tensor(bias, "bias", dim=1).shape) != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        with warnings.catch_warnings():  # CSR support is flagged as beta; the numbers are tested
            warnings.simplefilter("ignore", UserWarning)
            csr = weight.detach().to_sparse_csr()
            # copied into arrays of exactly their length: to_sparse_csr over-allocates the column
            # indices' storage, and torch.save writes whole storages
            csr = torch.sparse_csr_tensor(csr.crow_indices().clone(), csr.col_indices().clone(), csr.values().clone(),
                                          csr.shape)
            self.weight = nn.Parameter(csr, requires_grad=False)  # (out, in)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> "SparseLinear":
        """The CSR form of ``linear`` (its effective weight, masks included)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear, got {type(linear).__name__}")
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)  # (..., in): every leading dimension is a row
        out = torch.sparse.mm(self.weight, flat.t()).t().reshape(*x.shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias


def to_sparse(model: nn.Module, layers: L.Layers = None) -> nn.Module:
    """A copy of ``model`` with its masks baked and its Linear layers turned into :class:`SparseLinear`.

    Every :class:`~nncompress.pruning.Mask` of the copy is baked into plain weights (so masked
    convolutions become plain ones with zeros), and each chosen Linear layer, with any other
    parametrization of its tensors, is replaced by a CSR layer computing the same function.

    Parameters
    ----------
    model
        Any module.
    layers
        The Linear layers to convert (see :func:`nncompress.layers.select`); None: all of them.

    Returns
    -------
    nn.Module
        The new model; ``model`` is left unchanged.

    Raises
    ------
    TypeError, ValueError
        As :func:`nncompress.layers.select` (with Linear layers only).

    References
    ----------
    han2015learning
    """
    chosen = list(L.select(model, layers, types=(nn.Linear,)))
    model = parametrizations.bake(model, Mask)
    if chosen == [""]:  # a bare Linear layer
        return SparseLinear.from_dense(model)
    for name in chosen:
        L.replace_(model, name, SparseLinear.from_dense(model.get_submodule(name)))
    return model
