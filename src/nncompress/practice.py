"""Compression in practice: one layer in every form the book builds, for timing side by side.

:func:`layer_variants` turns one ``nn.Linear`` into the forms of the technique chapters at a given
sparsity: the dense layer, the same weights masked by a parametrization, baked to zeros, stored in
CSR, with whole output channels removed, factored at the same parameter budget, and as an int8
layer. :func:`latency_grid` times a set of them over batch sizes and thread counts with the
harness. Nothing here re-implements a technique: every form comes from its own module.

References: han2015learning, jacob2018quantization, gale2020sparse
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from . import budget, lowrank, parametrizations, pruning, quantization, validate
from .measure import measure_latencies

__all__ = ["VARIANTS", "layer_variants", "latency_grid"]

VARIANTS = ("dense", "masked", "zeros", "csr", "channels", "lowrank", "int8")


def _wrap(module: nn.Module) -> nn.Sequential:
    """``module`` as the layer ``fc`` of a one-layer model, named like a model's layer."""
    return nn.Sequential(OrderedDict(fc=module))


def _channels(layer: nn.Linear, sparsity: float) -> nn.Linear:
    """The output channels (rows) of ``layer`` that ``pruning.ln_structured_mask`` keeps, as a smaller layer."""
    alive = pruning.ln_structured_mask(layer.weight.detach(), sparsity, n=2, dim=0).any(dim=1)  # (out,)
    rows = alive.nonzero().squeeze(1)
    small = nn.Linear(layer.in_features, len(rows), bias=layer.bias is not None)
    with torch.no_grad():
        small.weight.copy_(layer.weight[rows])
        if layer.bias is not None:
            small.bias.copy_(layer.bias[rows])
    return small


def _sparse_forms(layer: nn.Linear, sparsity: float, which: set[str]) -> dict[str, nn.Module]:
    """The masked, zeros and CSR forms among ``which``."""
    masked = pruning.prune_magnitude(_wrap(layer), sparsity)  # a new model: ``layer`` is untouched
    zeros = parametrizations.bake(masked, pruning.Mask)
    forms = {"masked": masked, "zeros": zeros}
    if "csr" in which:
        forms["csr"] = pruning.to_sparse(zeros)
    return {name: form for name, form in forms.items() if name in which}


def layer_variants(layer: nn.Linear, sparsity: float, inputs: torch.Tensor | None = None,
                   which: Iterable[str] = VARIANTS) -> dict[str, nn.Module]:
    """The forms of ``layer`` that remove ``sparsity`` of its weights, each a new model.

    Each form is a one-layer model whose layer is named ``fc``:

    - ``"dense"``: a copy of the layer;
    - ``"masked"``: magnitude pruning as a mask parametrization (``pruning.prune_magnitude``);
    - ``"zeros"``: the same weights baked into a plain layer, zeros and all
      (``parametrizations.bake``);
    - ``"csr"``: the baked weights as a CSR matrix (``pruning.to_sparse``);
    - ``"channels"``: the output channels (rows) that ``pruning.ln_structured_mask`` keeps (largest
      L2 norms, ``1 - sparsity`` of them), copied into a smaller dense layer, as
      ``pruning.remove_channels`` does inside a network;
    - ``"lowrank"``: a truncated SVD at the largest rank whose two factors hold at most
      ``1 - sparsity`` of the weights (``budget.rank_for_budget``, ``lowrank.factorize_linear``);
    - ``"int8"``: the dense layer quantized to int8, weights per channel, activations calibrated
      on ``inputs`` (``quantization.post_training_quantize`` + ``to_int8``), with 7-bit
      activations (``reduce_range``) as in torch's x86 configuration, so that x86's kernels
      cannot saturate; the same form on every engine.

    Parameters
    ----------
    layer
        The ``nn.Linear`` to transform; it is left untouched.
    sparsity
        The fraction of the weights removed, in [0, 1).
    inputs
        Calibration inputs ``(batch, in_features)`` for the int8 form (needed only for it).
    which
        The forms to build, a subset of :data:`VARIANTS`.

    Returns
    -------
    dict
        Form names mapped to models in eval mode, in the order of :data:`VARIANTS`.

    Raises
    ------
    TypeError
        If ``layer`` is not an ``nn.Linear`` or ``sparsity`` not a number.
    ValueError
        If ``sparsity`` is outside [0, 1), ``which`` names an unknown form, or the int8 form is
        asked for without ``inputs``.

    References
    ----------
    han2015learning, jacob2018quantization, gale2020sparse, denton2014exploiting
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
    sparsity = validate.fraction(sparsity, "sparsity")
    which = set(which)
    unknown = sorted(which - set(VARIANTS))
    if unknown:
        raise ValueError(f"which must name forms among {VARIANTS}; unknown: {unknown}")
    if "int8" in which and inputs is None:
        raise ValueError("inputs (calibration inputs) are needed for the int8 form")
    out: dict[str, nn.Module] = {}
    if "dense" in which:
        out["dense"] = _wrap(copy.deepcopy(layer))
    if which & {"masked", "zeros", "csr"}:
        out |= _sparse_forms(layer, sparsity, which)
    if "channels" in which:
        out["channels"] = _wrap(_channels(layer, sparsity))
    if "lowrank" in which:
        m, n = layer.out_features, layer.in_features
        rank = min(budget.rank_for_budget((m, n), 1 - sparsity), m, n)
        out["lowrank"] = _wrap(lowrank.factorize_linear(layer, rank=rank))
    if "int8" in which:  # x86's kernels add pairs of products in 16 bits: 7-bit activations cannot saturate them
        fake = quantization.post_training_quantize(_wrap(layer), inputs, reduce_range=True)
        out["int8"] = quantization.to_int8(fake)
    return {name: out[name].eval() for name in VARIANTS if name in out}


def latency_grid(variants: Mapping, in_features: int, batch_sizes: Iterable[int] = (1, 256),
                 threads: Iterable[int] = (1, 2), min_run_time: float = 0.1) -> list[dict]:
    """Latency (seconds) of every variant at every batch size and thread count.

    The variants are timed in turns by :func:`nncompress.measure.measure_latencies` (round after
    round, each variant's median round kept), so that they can be compared.

    Parameters
    ----------
    variants
        Names (any hashable, e.g. ``(form, sparsity)``) mapped to models taking
        ``(batch, in_features)`` inputs.
    in_features
        The width of one input (an int >= 1).
    batch_sizes, threads
        The batch sizes and thread counts of the grid (ints >= 1).
    min_run_time
        Seconds of timing per variant and grid point (a number > 0).

    Returns
    -------
    list of dict
        One row per measurement: ``{"variant", "batch", "threads", "seconds"}``.

    Raises
    ------
    TypeError, ValueError
        If an argument is not of the kind or range above.

    References
    ----------
    hoefler2015scientific
    """
    in_features = validate.integer(in_features, "in_features", 1)
    batch_sizes = [validate.integer(b, "batch_sizes entries", 1) for b in batch_sizes]
    threads = [validate.integer(t, "threads entries", 1) for t in threads]
    rows = []
    for t in threads:
        for b in batch_sizes:
            seconds = measure_latencies(variants, b, (in_features,), threads=t, min_run_time=min_run_time)
            rows += [{"variant": name, "batch": b, "threads": t, "seconds": seconds[name]} for name in variants]
    return rows
