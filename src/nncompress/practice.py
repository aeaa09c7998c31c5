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

from . import lowrank, pruning, quantization
from .measure import measure_latencies

__all__ = ["VARIANTS", "layer_variants", "latency_grid"]

VARIANTS = ("dense", "masked", "zeros", "csr", "channels", "lowrank", "int8")


def layer_variants(layer: nn.Linear, sparsity: float, calibration: torch.Tensor | None = None,
                   which: Iterable[str] = VARIANTS) -> dict[str, nn.Module]:
    """The forms of ``layer`` (an ``nn.Linear``) that remove ``sparsity`` of its weights.

    - ``"dense"``: the layer itself (a copy);
    - ``"masked"``: magnitude pruning as a mask parametrization (``pruning.prune_magnitude``);
    - ``"zeros"``: the same weights baked into a plain layer, zeros and all (``pruning.bake``);
    - ``"csr"``: the baked weights as a CSR matrix (``pruning.to_sparse``);
    - ``"channels"``: the output channels (rows) that ``pruning.ln_structured_mask`` keeps (largest
      L2 norms, ``1 - sparsity`` of them), copied into a smaller dense layer, as
      ``pruning.remove_channels`` does inside a network;
    - ``"lowrank"``: a truncated SVD whose two factors hold at most ``1 - sparsity`` of the weights
      (``lowrank.factorize_linear``);
    - ``"int8"``: the dense layer quantized to int8, weights per channel, activations calibrated
      on ``calibration`` (``quantization.post_training_quantize`` + ``to_int8``).
    """
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer must be an nn.Linear, got {type(layer).__name__}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    which = list(which)
    unknown = [w for w in which if w not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {VARIANTS}")
    wrap = lambda module: nn.Sequential(OrderedDict(fc=module))  # noqa: E731 (named like a model's layer)
    out: dict[str, nn.Module] = {}
    m, n = layer.out_features, layer.in_features
    if "dense" in which:
        out["dense"] = wrap(copy.deepcopy(layer))
    if {"masked", "zeros", "csr"} & set(which):
        masked = pruning.prune_magnitude(wrap(copy.deepcopy(layer)), sparsity)
        if "masked" in which:
            out["masked"] = masked
        zeros = pruning.bake(copy.deepcopy(masked))
        if "zeros" in which:
            out["zeros"] = zeros
        if "csr" in which:
            out["csr"] = pruning.to_sparse(copy.deepcopy(zeros))
    if "channels" in which:
        alive = pruning.ln_structured_mask(layer.weight.detach(), sparsity, n=2, dim=0).any(dim=1)
        rows = alive.nonzero().squeeze(1)
        small = nn.Linear(n, len(rows), bias=layer.bias is not None)
        with torch.no_grad():
            small.weight.copy_(layer.weight[rows])
            if layer.bias is not None:
                small.bias.copy_(layer.bias[rows])
        out["channels"] = wrap(small)
    if "lowrank" in which:
        rank = max(1, int((1 - sparsity) * m * n // (m + n)))
        out["lowrank"] = wrap(lowrank.factorize_linear(layer, rank=min(rank, min(m, n))))
    if "int8" in which:
        if calibration is None:
            raise ValueError("calibration inputs are needed for the int8 variant")
        out["int8"] = quantization.to_int8(quantization.post_training_quantize(wrap(copy.deepcopy(layer)), calibration))
    return {name: module.eval() for name, module in out.items()}


def latency_grid(variants: Mapping[str, nn.Module], in_features: int, batch_sizes: Iterable[int] = (1, 256),
                 threads: Iterable[int] = (1, 2), min_run_time: float = 0.1) -> list[dict]:
    """Latency (seconds) of every variant at every batch size and thread count. The variants are
    timed in turns by :func:`nncompress.measure.measure_latencies`, so that they can be compared.
    One row per measurement: ``{"variant", "batch", "threads", "seconds"}``."""
    rows = []
    for t in threads:
        for b in batch_sizes:
            seconds = measure_latencies(variants, b, (in_features,), threads=t, min_run_time=min_run_time)
            rows += [{"variant": name, "batch": b, "threads": t, "seconds": seconds[name]} for name in variants]
    return rows
