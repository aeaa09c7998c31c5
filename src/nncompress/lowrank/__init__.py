"""Low-rank factorization: truncated and data-aware SVD of Linear layers (:mod:`.svd`), CP and
Tucker-2 decompositions of convolutions through tensorly (:mod:`.tensor`), and Kronecker-factored
Linear layers (:mod:`.kronecker`), and factorized embedding tables (:mod:`.embedding`).

Every model-level entry point (:func:`factorize`, :func:`decompose_convs`,
:func:`factorize_kronecker`) takes any ``nn.Module``, selects its layers by name, glob pattern or
type (:mod:`nncompress.layers`) and returns a new model; the variants ending in ``_`` work in place.
"""

from .embedding import FactorizedEmbedding, factorize_embedding
from .kronecker import (KroneckerLinear, factorize_kronecker, factorize_kronecker_, kronecker_linear,
                        kronecker_rearrange, nearest_kronecker)
from .svd import (LowRankLinear, break_even_rank, data_aware_singular_values, energy_rank, factorize, factorize_, factorize_linear,
                  layer_inputs, svd_factors, truncation_error)
from .tensor import cp_conv, decompose_convs, decompose_convs_, tucker2_conv, tucker2_ranks

__all__ = [
    "svd_factors", "truncation_error", "energy_rank", "break_even_rank", "data_aware_singular_values",
    "LowRankLinear", "factorize_linear", "layer_inputs", "factorize", "factorize_",
    "cp_conv", "tucker2_conv", "tucker2_ranks", "decompose_convs", "decompose_convs_",
    "kronecker_rearrange", "nearest_kronecker", "KroneckerLinear", "kronecker_linear",
    "factorize_kronecker", "factorize_kronecker_", "FactorizedEmbedding", "factorize_embedding",
]
