"""k-means weight sharing: cluster each layer's weights and share the centroids.

Level (a): :func:`init_centroids` and :func:`kmeans` (1-d Lloyd iterations). Level (b):
:class:`SharedWeight`, the parametrization ``weight = codebook[codes]``, attached by
:func:`apply_sharing` to the layers that ``layers`` selects.

References: han2016deep, gong2014compressing, lloyd1982least
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .. import layers as L
from .. import parametrizations, validate

__all__ = ["INITS", "init_centroids", "kmeans", "SharedWeight", "apply_sharing", "apply_sharing_", "shared_layers"]

INITS = ("linear", "density", "random")


# --------------------------------------------------------------------------- level (a): clustering

def _generator(seed) -> torch.Generator | None:
    """A generator from ``seed`` (None: torch's global one; a Generator is used as it is)."""
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(validate.integer(seed, "seed", 0, 2**63 - 1))


def _check_values(values) -> torch.Tensor:
    """``values`` flattened, if a non-empty, finite floating-point tensor."""
    validate.tensor(values, "values", floating=True, finite=True)
    return values.detach().reshape(-1)


def init_centroids(values: torch.Tensor, k: int, method: str = "linear",
                   seed: int | torch.Generator | None = None) -> torch.Tensor:
    """``k`` initial centroids for :func:`kmeans`, as Han et al. compare them.

    - ``"linear"``: evenly spaced between the smallest and largest value;
    - ``"density"``: evenly spaced in the cumulative distribution (quantiles at ``(i + 1/2) / k``),
      so that dense regions get more centroids;
    - ``"random"`` (Forgy): ``k`` distinct values drawn at random from the data.

    Parameters
    ----------
    values
        A floating-point tensor of any shape; its entries are the points.
    k
        The number of centroids, in ``[1, values.numel()]``.
    method
        One of :data:`INITS`.
    seed
        For ``"random"``: an int, a ``torch.Generator`` (drawn from, so successive calls differ),
        or None for torch's global generator.

    Returns
    -------
    torch.Tensor
        ``(k,)``, of ``values``' dtype; sorted for ``"random"``.

    Raises
    ------
    TypeError
        If ``values`` is not a floating-point tensor or ``k``/``seed`` not an int.
    ValueError
        For empty or non-finite ``values``, ``k`` out of range, or an unknown ``method``.

    References: han2016deep
    """
    flat = _check_values(values)
    k = validate.integer(k, "k", 1, flat.numel())
    validate.choice(method, "method", INITS)
    generator = _generator(seed)
    if method == "linear":
        return torch.linspace(float(flat.min()), float(flat.max()), k, dtype=flat.dtype)
    if method == "density":
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        return torch.quantile(flat.double(), levels).to(flat.dtype)
    return flat[torch.randperm(flat.numel(), generator=generator)[:k]].sort().values


def _assign(flat: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for each value (1-d: a binary search between midpoints)."""
    order = centroids.argsort()
    ordered = centroids[order]
    midpoints = (ordered[1:] + ordered[:-1]) / 2
    return order[torch.searchsorted(midpoints, flat.contiguous())]


def _lloyd_step(flat: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The means of the clusters; an empty cluster takes one of the values farthest from theirs."""
    k = len(centroids)
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, flat)
    counts = torch.bincount(labels, minlength=k)
    empty = (counts == 0).nonzero().reshape(-1)
    if len(empty):
        far = (flat - centroids[labels]).abs().topk(min(len(empty), len(flat))).indices
        empty = empty[:len(far)]
        sums.index_add_(0, labels[far], -flat[far])
        counts.index_add_(0, labels[far], -torch.ones_like(far))
        sums[empty], counts[empty] = flat[far], 1
    return torch.where(counts > 0, sums / counts.clamp_min(1), centroids)


def kmeans(values: torch.Tensor, k: int, init: str | torch.Tensor = "linear", iterations: int = 100,
           tol: float = 0.0, seed: int | torch.Generator | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's algorithm on the scalars of ``values``.

    Iterates until no centroid moves by more than ``tol`` or ``iterations`` is reached. A
    centroid that loses all its members is moved to one of the values farthest from their
    centroids, as scikit-learn does, so that no shared value is wasted.

    Parameters
    ----------
    values
        A floating-point tensor of any shape; its ``n`` entries are the points.
    k
        The number of clusters, in ``[1, n]``.
    init
        A method of :func:`init_centroids`, or a tensor of ``k`` starting centroids.
    iterations
        The largest number of Lloyd iterations (>= 0).
    tol
        Stop when no centroid moves by more than this (>= 0).
    seed
        Passed to :func:`init_centroids` for ``init="random"``.

    Returns
    -------
    centroids : torch.Tensor
        ``(k,)``, of ``values``' dtype.
    labels : torch.Tensor
        ``(n,)`` int64: each value's nearest centroid.
    inertia : float
        The sum of squared distances of the values to their centroids.

    Raises
    ------
    TypeError
        If ``values`` is not a floating-point tensor, or ``k``/``iterations`` not an int.
    ValueError
        For empty or non-finite ``values``, ``k`` out of range, an ``init`` tensor of another
        length than ``k``, or a negative ``iterations`` or ``tol``.

    References: lloyd1982least, han2016deep
    """
    flat = _check_values(values).double()
    k = validate.integer(k, "k", 1, flat.numel())
    iterations = validate.integer(iterations, "iterations", 0)
    tol = validate.number(tol, "tol", 0.0)
    if isinstance(init, torch.Tensor):
        centroids = init.detach().reshape(-1).double().clone()
        if len(centroids) != k:
            raise ValueError(f"init must hold k = {k} centroids, got {len(centroids)}")
    else:
        centroids = init_centroids(flat, k, init, seed).double()
    labels = _assign(flat, centroids)
    for _ in range(iterations):
        updated = _lloyd_step(flat, centroids, labels)
        moved = float((updated - centroids).abs().max())
        centroids = updated
        labels = _assign(flat, centroids)
        if moved <= tol:
            break
    inertia = float((flat - centroids[labels]).pow(2).sum())
    return centroids.to(values.dtype), labels, inertia


# --------------------------------------------------------------------------- level (b): shared layers

class SharedWeight(nn.Module):
    """Parametrization ``weight = where(mask, codebook[codes], 0)``: a layer with shared weights.

    Gradients reach the codebook through the indexing, so each centroid receives the sum of its
    members' gradients. The original weight is not used by the forward pass.

    Parameters
    ----------
    codebook
        ``(k,)`` shared values; stored as a trainable Parameter.
    codes
        Integer tensor of the weight's shape, entries in ``[0, k)``; stored as an int64 buffer.
    mask
        Boolean tensor of the weight's shape: False marks a pruned (zero) entry; a bool buffer.

    Raises
    ------
    TypeError
        If an argument is not a tensor.
    ValueError
        If ``codes`` and ``mask`` differ in shape or a code lies outside ``[0, k)``.

    References: han2016deep
    """

    def __init__(self, codebook: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor):
        super().__init__()
        validate.tensor(codebook, "codebook", dim=1, floating=True)
        validate.tensor(codes, "codes", nonempty=False)
        validate.tensor(mask, "mask", nonempty=False)
        if codes.shape != mask.shape:
            raise ValueError(f"codes and mask must have the same shape, got {tuple(codes.shape)} and {tuple(mask.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= len(codebook)):
            raise ValueError(f"codes must lie in [0, {len(codebook) - 1}]")
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.register_buffer("codes", codes.to(torch.int64))
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.codebook[self.codes], torch.zeros((), dtype=self.codebook.dtype))


def _widths(model: nn.Module, bits, layers) -> dict[str, int]:
    """``{layer name: bits}`` for the layers to share, every width checked."""
    if isinstance(bits, Mapping):
        if layers is not None:
            raise ValueError("pass either layers or a per-layer bits mapping (which chooses the layers), not both")
        chosen = L.select_values(model, bits)
        return {name: validate.bits(b, f"bits[{name!r}]") for name, b in chosen.items()}
    bits = validate.bits(bits)
    return {name: bits for name in L.select(model, layers)}


def _share_(layer: nn.Module, bits: int, init: str, iterations: int, generator: torch.Generator) -> None:
    """Cluster the non-zero weights of one plain layer and attach its :class:`SharedWeight`."""
    weight = layer.weight.detach()
    mask = weight != 0
    alive = weight[mask]
    centroids, labels, _ = kmeans(alive, min(1 << bits, alive.numel()), init, iterations, seed=generator)
    codes = torch.zeros(weight.shape, dtype=torch.int64)
    codes[mask] = labels
    parametrizations.attach_(layer, "weight", SharedWeight(centroids, codes, mask))


def apply_sharing_(model: nn.Module, bits: int | Mapping, init: str = "linear", layers: L.Layers = None,
                   iterations: int = 100, seed: int = 0) -> nn.Module:
    """:func:`apply_sharing` in place: attach the shared weights to ``model`` itself; returns it.

    Arguments are checked and every chosen layer is verified before any layer is changed.

    Parameters
    ----------
    model, bits, init, layers, iterations, seed
        As for :func:`apply_sharing`; ``model`` is changed.

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    TypeError, ValueError
        As :func:`apply_sharing`.

    References: han2016deep
    """
    validate.module(model)
    widths = _widths(model, bits, layers)
    validate.choice(init, "init", INITS)
    iterations = validate.integer(iterations, "iterations", 0)
    generator = _generator(validate.integer(seed, "seed", 0, 2**63 - 1))
    modules = dict(model.named_modules())
    for name in widths:
        if parametrizations.chain(modules[name], "weight"):
            raise ValueError(f"layers: {name} is already parametrized; bake it first "
                             "(nncompress.parametrizations.bake)")
        if not bool(modules[name].weight.detach().any()):
            raise ValueError(f"layers: {name} has no non-zero weight to share")
    for name, width in widths.items():
        _share_(modules[name], width, init, iterations, generator)
    return model


def apply_sharing(model: nn.Module, bits: int | Mapping, init: str = "linear", layers: L.Layers = None,
                  iterations: int = 100, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose chosen layers share ``2**bits`` weights each, found by :func:`kmeans`.

    Only non-zero weights are clustered; zeros (pruned weights) stay zero and keep no code, as in
    Deep Compression, where sharing follows pruning. A layer with fewer non-zeros than
    ``2**bits`` gets one centroid per non-zero. The chosen layers must not carry other
    parametrizations: bake pruning masks first (``nncompress.parametrizations.bake``).

    Parameters
    ----------
    model
        Any module; left unchanged.
    bits
        One width in [1, 16] for every chosen layer, or ``{name, pattern or type: bits}`` (see
        :func:`nncompress.layers.select_values`), which then also chooses the layers.
    init
        The initialization of k-means, one of :data:`INITS`.
    layers
        The layers to share (:func:`nncompress.layers.select`): by default every Linear and
        Conv2d layer. Not allowed together with a ``bits`` mapping.
    iterations
        The largest number of Lloyd iterations per layer.
    seed
        Seeds the random initialization (one generator, drawn from layer by layer in module order).

    Returns
    -------
    nn.Module
        The new model, with a :class:`SharedWeight` on each chosen layer's weight.

    Raises
    ------
    TypeError
        If ``model`` is not a module, or ``bits``, ``iterations`` or ``seed`` not an int.
    ValueError
        For bits outside [1, 16], an unknown ``init``, a selection that matches nothing, both
        ``layers`` and a ``bits`` mapping, or a chosen layer that is already parametrized or all zero.

    References: han2016deep, gong2014compressing
    """
    validate.module(model)
    return apply_sharing_(copy.deepcopy(model), bits, init, layers, iterations, seed)


def shared_layers(model: nn.Module) -> dict[str, SharedWeight]:
    """The :class:`SharedWeight` parametrization of every shared layer of ``model``.

    Parameters
    ----------
    model
        Any module.

    Returns
    -------
    dict
        ``{layer name: SharedWeight}`` in module order.

    Raises
    ------
    TypeError
        If ``model`` is not a module.

    References: han2016deep
    """
    found = parametrizations.find(model, SharedWeight)
    return {key.removesuffix("weight").removesuffix("."): p for key, p in found.items()
            if key == "weight" or key.endswith(".weight")}
