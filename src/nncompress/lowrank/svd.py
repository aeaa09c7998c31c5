"""Truncated and data-aware SVD of Linear layers, in any model.

An ``m x n`` weight of rank ``r`` factors as ``W = A B`` with ``A`` of shape ``(m, r)`` and ``B``
of shape ``(r, n)``: ``r (m + n)`` numbers and multiply-adds per input instead of ``m n``. The
factorized layer saves parameters only below the break-even rank ``m n / (m + n)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .. import layers as _layers
from .. import validate
from ..calibration import input_statistics
from ..layers import capture_features

__all__ = ["svd_factors", "truncation_error", "energy_rank", "break_even_rank", "data_aware_singular_values",
           "LowRankLinear",
           "factorize_linear", "layer_inputs", "factorize", "factorize_"]


def _check_matrix(weight, name: str = "weight") -> torch.Tensor:
    """``weight`` if it is a non-empty 2-d tensor."""
    return validate.tensor(weight, name, dim=2)


def _check_energy(energy) -> float:
    """``energy`` as a float in (0, 1]."""
    return validate.number(energy, "energy", 0.0, 1.0, low_open=True)


# --------------------------------------------------------------------------- level (a): matrices

def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep at least ``energy`` of ``sum(sigma^2)``.

    Parameters
    ----------
    singular_values
        A non-empty 1-d tensor of singular values, largest first.
    energy
        The fraction of ``sum(sigma_i^2)`` to keep, in (0, 1].

    Returns
    -------
    int
        A rank in ``[1, len(singular_values)]`` (1 for an all-zero spectrum).

    Raises
    ------
    TypeError
        If ``singular_values`` is not a tensor or ``energy`` not a number.
    ValueError
        If ``singular_values`` is empty or not 1-d, or ``energy`` lies outside (0, 1].

    References
    ----------
    eckart1936approximation
    """
    validate.tensor(singular_values, "singular_values", dim=1)
    energy = _check_energy(energy)
    power = singular_values.detach().double().pow(2)
    if float(power.sum()) == 0.0:
        return 1
    kept = power.cumsum(0) / power.sum()
    return min(int((kept < energy - 1e-12).sum()) + 1, len(singular_values))


def break_even_rank(m: int, n: int) -> int:
    """The largest rank at which ``r (m + n) < m n``: below it, factorizing saves parameters and FLOPs.

    Parameters
    ----------
    m, n
        The weight's shape, ints >= 1.

    Returns
    -------
    int
        ``(m n - 1) // (m + n)`` (0 if no rank saves anything).

    Raises
    ------
    TypeError, ValueError
        If ``m`` or ``n`` is not an int >= 1.

    References
    ----------
    xue2013restructuring
    """
    m, n = validate.integer(m, "m", 1), validate.integer(n, "n", 1)
    return (m * n - 1) // (m + n)


def truncation_error(singular_values: torch.Tensor, rank: int) -> float:
    """Frobenius error of the best rank-``rank`` approximation: ``sqrt(sum_{i > rank} sigma_i^2)``.

    Parameters
    ----------
    singular_values
        A non-empty 1-d tensor of singular values, largest first.
    rank
        An int in ``[1, len(singular_values)]``.

    Returns
    -------
    float
        The Eckart-Young error.

    Raises
    ------
    TypeError, ValueError
        For a bad ``singular_values`` or a ``rank`` outside the range.

    References
    ----------
    eckart1936approximation
    """
    validate.tensor(singular_values, "singular_values", dim=1)
    rank = validate.integer(rank, "rank", 1, len(singular_values))
    return float(singular_values[rank:].double().pow(2).sum().sqrt())


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A B`` the best rank-``rank`` approximation of ``weight`` (truncated SVD).

    ``A = U_r S_r^(1/2)`` and ``B = S_r^(1/2) V_r^T``: the singular values are split evenly so
    both factors have the same scale.

    Parameters
    ----------
    weight
        An ``(m, n)`` tensor.
    rank
        An int in ``[1, min(m, n)]``.

    Returns
    -------
    tuple of torch.Tensor
        ``A`` of shape ``(m, rank)`` and ``B`` of shape ``(rank, n)``, in ``weight``'s dtype.

    Raises
    ------
    TypeError, ValueError
        If ``weight`` is not a non-empty 2-d tensor or ``rank`` is outside the range.

    References
    ----------
    eckart1936approximation, xue2013restructuring, denton2014exploiting
    """
    _check_matrix(weight)
    rank = validate.integer(rank, "rank", 1, min(weight.shape))
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(weight.dtype), (root[:, None] * vh[:rank]).to(weight.dtype)


def _rows(inputs: torch.Tensor, features: int) -> torch.Tensor:
    """``inputs`` as ``(rows, features)``: all leading dimensions (batch, tokens) are rows."""
    validate.tensor(inputs, "inputs", floating=True)
    x = inputs.detach()
    x = x.reshape(-1, features) if x.shape[-1] == features else x.flatten(1)
    if x.shape[1] != features:
        raise ValueError(f"inputs must have {features} features, got shape {tuple(inputs.shape)}")
    return x


def _gram(inputs: torch.Tensor, features: int) -> torch.Tensor:
    """``X^T X`` of the rows of ``inputs``, float64."""
    x = _rows(inputs, features).double()
    return x.T @ x


def _data_aware_factors(weight: torch.Tensor, gram: torch.Tensor, rank: int, damp: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` ``(A, B)`` minimizing ``||(W - A B) C^(1/2)||_F`` for ``C = X^T X + damp I`` (DRONE).

    Only ``X^T X`` matters, so the inputs need not be kept: with ``C = Q diag(e) Q^T`` the problem
    is the truncated SVD of ``W Q diag(sqrt(e))``, mapped back. ``damp`` (a fraction of the mean
    diagonal, as GPTQ's dampening) keeps directions that the calibration data hardly excites
    from being decided by rounding noise, which matters because the next layers of a compressed
    model see inputs a little off the calibration data.
    """
    c = gram.double() / gram.diagonal().mean().clamp(min=1e-300)
    c = c + damp * torch.eye(len(c), dtype=c.dtype)
    e, q = torch.linalg.eigh(c)
    keep = e > e.max() * 1e-10  # directions the data never excites (possible only without damping) are dropped
    root, basis = e[keep].sqrt(), q[:, keep]  # (k,), (n, k)
    u, s, vh = torch.linalg.svd(weight.detach().double() @ basis * root, full_matrices=False)
    rank = min(rank, len(s))
    a = u[:, :rank] * s[:rank].sqrt()
    b = (s[:rank].sqrt()[:, None] * vh[:rank]) / root @ basis.T
    return a.to(weight.dtype), b.to(weight.dtype)


def data_aware_singular_values(weight: torch.Tensor, gram: torch.Tensor, damp: float = 0.0) -> torch.Tensor:
    """Singular values of ``W C^(1/2)``, ``C`` the damped Gram matrix of the layer's inputs: the data-aware spectrum.

    With ``damp=0`` and ``gram = X^T X`` they are the singular values of ``W X^T``, the layer's
    outputs on the rows ``X``: the sum of the squares beyond rank ``r`` is the output error of
    the best rank-``r`` data-aware factorization (:func:`factorize_linear` with data), as the
    plain singular values give the weight error of the truncated SVD.

    Parameters
    ----------
    weight
        The ``(m, n)`` weight.
    gram
        ``(n, n)``: ``sum x x^T`` over the layer's inputs (any positive scale).
    damp
        As :func:`factorize_linear`.

    Returns
    -------
    torch.Tensor
        float64 singular values, largest first (``gram`` normalized to a mean diagonal of 1).

    References
    ----------
    chen2021drone
    """
    w = _check_matrix(weight)
    validate.tensor(gram, "gram", dim=2, floating=True)
    if tuple(gram.shape) != (w.shape[1],) * 2:
        raise ValueError(f"gram must be ({w.shape[1]}, {w.shape[1]}), got {tuple(gram.shape)}")
    c = gram.double() / gram.diagonal().mean().clamp(min=1e-300)
    e, q = torch.linalg.eigh(c + validate.number(damp, "damp", 0.0) * torch.eye(len(c), dtype=c.dtype))
    return torch.linalg.svdvals(w.detach().double() @ q * e.clamp(min=0).sqrt())


# --------------------------------------------------------------------------- level (b): Linear

class LowRankLinear(nn.Module):
    """``y = up(down(x))``: a Linear layer whose ``(m, n)`` weight is the product ``A B``.

    Parameters
    ----------
    a
        The ``(m, r)`` factor, copied into ``up.weight``.
    b
        The ``(r, n)`` factor, copied into ``down.weight``.
    bias
        The ``(m,)`` bias, or None.

    Raises
    ------
    ValueError
        If the factors' shapes do not chain.

    References
    ----------
    xue2013restructuring, denton2014exploiting
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        (m, r), (r2, n) = _check_matrix(a, "a").shape, _check_matrix(b, "b").shape
        if r != r2:
            raise ValueError(f"factor shapes do not chain: a is {tuple(a.shape)} and b is {tuple(b.shape)}")
        self.down = nn.Linear(n, r, bias=False)
        self.up = nn.Linear(r, m, bias=bias is not None)
        with torch.no_grad():
            self.down.weight.copy_(b)
            self.up.weight.copy_(a)
            if bias is not None:
                self.up.bias.copy_(bias)

    @property
    def rank(self) -> int:
        """The inner dimension ``r``."""
        return self.down.out_features

    @property
    def in_features(self) -> int:
        """``n``, as for ``nn.Linear``."""
        return self.down.in_features

    @property
    def out_features(self) -> int:
        """``m``, as for ``nn.Linear``."""
        return self.up.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The reconstructed ``(m, n)`` weight ``A B``."""
        return self.up.weight @ self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def factorize_linear(linear: nn.Linear, rank: int | None = None, energy: float | None = None,
                     inputs: torch.Tensor | None = None, gram: torch.Tensor | None = None, damp: float = 0.0
                     ) -> LowRankLinear:
    """Factor ``linear`` into a :class:`LowRankLinear`, by ``rank`` or by retained ``energy``.

    Parameters
    ----------
    linear
        The layer; it is left unchanged.
    rank, energy
        Exactly one: the rank, in ``[1, min(m, n)]``, or the fraction of the weight's squared
        singular values to keep, in (0, 1] (:func:`energy_rank`).
    inputs
        Calibration inputs of this layer, ``(..., n)``. With them, the factors minimize the output
        error ``||(W - A B) x||`` on them instead of the weight error (data-aware, as DRONE);
        ``energy`` still refers to the singular values of the plain weight.
    gram
        Instead of ``inputs``: their ``(n, n)`` Gram matrix ``sum x x^T``, all that the data-aware
        factors depend on (:attr:`nncompress.calibration.InputStats.gram`).
    damp
        With data: a fraction ``>= 0`` of the Gram matrix's mean diagonal added to its diagonal
        (as GPTQ's dampening, 0.01 there), so that directions the calibration data hardly
        excites keep the weight's own behaviour; 0 (the default) is DRONE's exact solution on
        the data.

    Returns
    -------
    LowRankLinear
        The factorized layer, with the bias of ``linear``.

    Raises
    ------
    TypeError
        If ``linear`` is not an ``nn.Linear``.
    ValueError
        Unless exactly one of ``rank`` and ``energy`` is given; for a rank or energy out of range,
        ``inputs`` without ``n`` features, a ``gram`` that is not ``(n, n)``, or both ``inputs``
        and ``gram``.

    References
    ----------
    eckart1936approximation, chen2021drone
    """
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank and energy")
    w = linear.weight.detach()
    if rank is None:
        rank = energy_rank(torch.linalg.svdvals(w.double()), energy)
    rank = validate.integer(rank, "rank", 1, min(w.shape))
    if inputs is not None and gram is not None:
        raise ValueError("give inputs or gram, not both")
    if inputs is not None:
        gram = _gram(inputs, w.shape[1])
    elif gram is not None:
        validate.tensor(gram, "gram", dim=2, floating=True)
        if tuple(gram.shape) != (w.shape[1],) * 2:
            raise ValueError(f"gram must be ({w.shape[1]}, {w.shape[1]}), got {tuple(gram.shape)}")
    damp = validate.number(damp, "damp", 0.0)
    a, b = svd_factors(w, rank) if gram is None else _data_aware_factors(w, gram, rank, damp)
    return LowRankLinear(a, b, None if linear.bias is None else linear.bias.detach())


@torch.no_grad()
def layer_inputs(model: nn.Module, inputs: torch.Tensor, layers: _layers.Layers = None, batch_size: int = 1000
                 ) -> dict[str, torch.Tensor]:
    """What each selected layer receives when ``model`` runs on ``inputs``, in eval mode.

    Parameters
    ----------
    model
        Any module; its state and training mode are left as they were.
    inputs
        Model inputs, ``(N, ...)``.
    layers
        A selection of Linear or Conv2d layers (:func:`nncompress.layers.select`).
    batch_size
        Inputs per forward pass.

    Returns
    -------
    dict
        ``{name: inputs}``: ``(rows, in_features)`` for a Linear layer (every token of every
        example is a row), ``(N, features)`` flattened for other layers.

    Raises
    ------
    TypeError, ValueError
        For a bad selection, ``inputs`` that is not a non-empty tensor, or a bad ``batch_size``.
    """
    validate.tensor(inputs, "inputs")
    batch_size = validate.integer(batch_size, "batch_size", 1)
    chosen = _layers.select(model, layers)
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in chosen}
    training = model.training
    model.eval()
    try:
        with capture_features(model, list(chosen), kind="input") as received:
            for start in range(0, len(inputs), batch_size):
                model(inputs[start:start + batch_size])
                for name, layer in chosen.items():
                    x = received[name]
                    seen[name].append(x.reshape(-1, layer.in_features) if isinstance(layer, nn.Linear) else x.flatten(1))
    finally:
        model.train(training)
    return {name: torch.cat(values) for name, values in seen.items()}


def _plan(model: nn.Module, ranks, energy, layers) -> dict[str, int | None]:
    """``{layer name: rank}`` (None: chosen by ``energy``) from :func:`factorize`'s arguments."""
    if (ranks is None) == (energy is None):
        raise ValueError("give ranks or energy, not both and not neither")
    if ranks is not None:
        if layers is not None:
            raise ValueError("layers selects the layers for energy; with ranks, key the ranks by layer instead")
        plan = _layers.select_values(model, ranks, types=(nn.Linear,))
        return {name: validate.integer(r, f"ranks[{name!r}]", 1) for name, r in plan.items()}
    _check_energy(energy)
    return dict.fromkeys(_layers.select(model, layers, types=(nn.Linear,)))


def _factorized_layers(model: nn.Module, ranks, energy, layers, inputs, batches, damp) -> dict[str, LowRankLinear]:
    """The replacement of each planned layer of ``model``."""
    plan = _plan(model, ranks, energy, layers)
    if inputs is not None and batches is not None:
        raise ValueError("give inputs or batches, not both")
    grams = {}
    if inputs is not None:
        grams = {name: _gram(x, x.shape[1]) for name, x in layer_inputs(model, inputs, list(plan)).items()}
    elif batches is not None:
        grams = {name: s.gram for name, s in input_statistics(model, batches, list(plan)).items()}
    modules = dict(model.named_modules())
    return {name: factorize_linear(modules[name], rank, energy if rank is None else None, gram=grams.get(name), damp=damp)
            for name, rank in plan.items()}


def factorize(model: nn.Module, ranks: Mapping | None = None, energy: float | None = None,
              layers: _layers.Layers = None, inputs: torch.Tensor | None = None, batches: Sequence | None = None,
              damp: float = 0.0) -> nn.Module:
    """A new model with Linear layers of ``model`` replaced by :class:`LowRankLinear` factorizations.

    Parameters
    ----------
    model
        Any module; it is left unchanged.
    ranks
        ``{name, glob pattern or type: rank}`` (:func:`nncompress.layers.select_values`), e.g.
        ``{"fc1": 64, "encoder.*.dense": 32}``; later keys override earlier ones.
    energy
        Instead of ``ranks``: one fraction of each weight's squared singular values to keep.
    layers
        With ``energy``: the Linear layers to factorize (default: all).
    inputs
        Model inputs for data-aware factorization (DRONE): each layer is fitted to the inputs it
        receives in the *original* model.
    batches
        Instead of ``inputs``: calibration batches, one forward pass each (for models whose
        inputs come in batches of different shapes, such as sentences grouped by length); only
        each layer's Gram matrix is kept (:func:`nncompress.calibration.input_statistics`).
    damp
        With data: as :func:`factorize_linear`.

    Returns
    -------
    nn.Module
        The factorized copy.

    Raises
    ------
    TypeError, ValueError
        Unless exactly one of ``ranks`` and ``energy`` is given; for ``layers`` given with
        ``ranks``; for a selection that names no Linear layer of the model; for ranks or energy
        out of range.

    References
    ----------
    xue2013restructuring, denton2014exploiting, chen2021drone
    """
    validate.module(model)
    return _layers.replace(model, _factorized_layers(model, ranks, energy, layers, inputs, batches, damp))


def factorize_(model: nn.Module, ranks: Mapping | None = None, energy: float | None = None,
               layers: _layers.Layers = None, inputs: torch.Tensor | None = None, batches: Sequence | None = None,
               damp: float = 0.0) -> nn.Module:
    """:func:`factorize` in place: replaces the layers inside ``model`` and returns it.

    Parameters, Raises and References are those of :func:`factorize`.

    Returns
    -------
    nn.Module
        ``model`` itself.
    """
    validate.module(model)
    for name, layer in _factorized_layers(model, ranks, energy, layers, inputs, batches, damp).items():
        _layers.replace_(model, name, layer)
    return model
