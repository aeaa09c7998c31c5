"""Factorized embedding tables, as ALBERT's: a narrow table followed by a projection.

A ``(V, d)`` table ``E`` becomes a ``(V, r)`` table and an ``(r, d)`` projection: ``r (V + d)``
numbers instead of ``V d``. ALBERT (Lan et al., 2020) trains the two factors from the start; here
they are fitted after training, as ``E ~ (E P) P^T`` with ``P`` the ``(d, r)`` orthonormal basis of
the table's top right singular vectors. Each token's vector is projected onto that subspace, so
no token is left without a vector, and with ``counts`` the subspace is the one that serves the
frequent tokens best.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import validate

__all__ = ["FactorizedEmbedding", "factorize_embedding"]


class FactorizedEmbedding(nn.Module):
    """``E[ids] = project(table[ids])``: an embedding whose ``(V, d)`` table is ``T P^T``.

    Parameters
    ----------
    table
        The ``(V, r)`` narrow table ``T``.
    projection
        The ``(d, r)`` matrix ``P`` that maps a narrow vector to the model's width.
    padding_idx
        As ``nn.Embedding``'s.

    Raises
    ------
    ValueError
        If the shapes do not chain.

    References
    ----------
    lan2020albert
    """

    def __init__(self, table: torch.Tensor, projection: torch.Tensor, padding_idx: int | None = None):
        super().__init__()
        validate.tensor(table, "table", dim=2, floating=True)
        validate.tensor(projection, "projection", dim=2, floating=True)
        if table.shape[1] != projection.shape[1]:
            raise ValueError(f"table (V, r) and projection (d, r) must share r, got {tuple(table.shape)} "
                             f"and {tuple(projection.shape)}")
        self.table = nn.Embedding.from_pretrained(table.detach().clone(), freeze=False, padding_idx=padding_idx)
        self.project = nn.Linear(table.shape[1], projection.shape[0], bias=False)
        with torch.no_grad():
            self.project.weight.copy_(projection)
        self.num_embeddings, self.embedding_dim, self.padding_idx = table.shape[0], projection.shape[0], padding_idx

    @property
    def rank(self) -> int:
        """The narrow width ``r``."""
        return self.table.embedding_dim

    @property
    def weight(self) -> torch.Tensor:
        """The reconstructed ``(V, d)`` table (for checking; forward never builds it)."""
        return self.project(self.table.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project(self.table(ids))


def factorize_embedding(embedding: nn.Embedding, rank: int, counts: torch.Tensor | None = None) -> FactorizedEmbedding:
    """The rank-``rank`` factorization of ``embedding``'s table, optionally weighted by token counts.

    Without ``counts`` the result is the truncated SVD of the table, the best rank-``rank``
    approximation in the Frobenius norm (Eckart-Young). With ``counts``, the subspace minimizes
    ``sum_t counts_t ||E_t - E_t P P^T||^2``, the error a stream of text with those token
    frequencies sees; tokens never counted are still projected onto it.

    Parameters
    ----------
    embedding
        An ``nn.Embedding`` with a ``(V, d)`` table; left unchanged.
    rank
        The narrow width, in ``[1, d]``.
    counts
        ``(V,)`` non-negative occurrences of each token (for example in training text), not all zero.

    Returns
    -------
    FactorizedEmbedding
        With ``embedding``'s padding index.

    Raises
    ------
    TypeError
        If ``embedding`` is not an ``nn.Embedding``.
    ValueError
        For a rank out of range or bad counts.

    References
    ----------
    lan2020albert, eckart1936approximation
    """
    if not isinstance(embedding, nn.Embedding):
        raise TypeError(f"embedding must be an nn.Embedding, got {type(embedding).__name__}")
    table = embedding.weight.detach()
    vocabulary, width = table.shape
    rank = validate.integer(rank, "rank", 1, width)
    weighted = table.double()
    if counts is not None:
        validate.tensor(counts, "counts", dim=1)
        if len(counts) != vocabulary or (counts < 0).any() or not counts.any():
            raise ValueError(f"counts must hold {vocabulary} non-negative values, not all zero")
        weighted = weighted * counts.double().sqrt()[:, None]
    basis = torch.linalg.svd(weighted, full_matrices=False).Vh[:rank].T  # (d, r), orthonormal columns
    narrow = (table.double() @ basis).to(table.dtype)
    return FactorizedEmbedding(narrow, basis.to(table.dtype), embedding.padding_idx)
