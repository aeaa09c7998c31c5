"""Calibration data for one-shot compression: what each layer receives, summarized.

The one-shot methods used on large models (GPTQ, SparseGPT, Wanda, SmoothQuant, data-aware low
rank) do not train. They look at what each Linear layer receives on a few hundred calibration
inputs, through three statistics of its input rows ``x`` (every token of every input is a row):

- the Gram matrix ``G = sum x x^T`` (``(in, in)``, float64): the Hessian of the layer's squared
  reconstruction error ``||W X - W' X||^2`` is ``2 G``, the quantity GPTQ and SparseGPT use;
- the per-feature L2 norm ``sqrt(diag G)``, Wanda's activation statistic;
- the per-feature maximum ``|x|``, SmoothQuant's.

:func:`input_statistics` gathers them for a whole model in one pass, summing over batches, so
calibration never holds all the activations at once. :func:`inverse_hessian_factor` is the
damped, Cholesky-factored inverse Hessian that GPTQ and SparseGPT share.

References: frantar2023optq, frantar2023sparsegpt, sun2024simple, xiao2023smoothquant
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import layers as L
from . import validate

__all__ = ["InputStats", "input_statistics", "inverse_hessian_factor", "layerwise_"]


@dataclass
class InputStats:
    """What one Linear layer received over the calibration data.

    Parameters
    ----------
    gram
        ``sum x x^T`` over the input rows, float64 ``(in, in)``.
    absmax
        ``max |x|`` per input feature, float32 ``(in,)``.
    rows
        How many rows (tokens) were summed.
    """

    gram: torch.Tensor
    absmax: torch.Tensor
    rows: int

    @property
    def norms(self) -> torch.Tensor:
        """The L2 norm of each input feature over all rows (Wanda's ``||X_j||``), float32."""
        return self.gram.diagonal().clamp(min=0).sqrt().float()


@contextmanager
def one_thread():
    """Run the enclosed torch operations on one thread, then restore the thread count.

    The column loops of GPTQ and SparseGPT run thousands of small operations; with several
    threads each pays a synchronization, and on a busy machine a thread that waits for a core
    makes every one of them slow. Elementwise results do not depend on the thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Done(Exception):
    """Raised by a hook to end a calibration pass once every selected layer has seen its input."""


def input_statistics(model: nn.Module, batches: Iterable, layers: L.Layers = None) -> dict[str, InputStats]:
    """Gram matrix, feature norms and feature maxima of what each selected Linear layer receives.

    When every selected layer runs exactly once in the first pass, later passes stop as soon as
    the last of them has seen its input: the rest of the model would change nothing recorded.

    Parameters
    ----------
    model
        Any module; run in eval mode without gradients, its mode restored afterwards.
    batches
        Model inputs, one forward pass each (e.g. sentences grouped by length, so that no
        padding token enters the statistics).
    layers
        A selection of Linear layers (:func:`nncompress.layers.select`); all of them when None.

    Returns
    -------
    dict
        Layer name mapped to :class:`InputStats`.

    Raises
    ------
    TypeError
        If ``model`` is not a module or the selection holds a layer that is not Linear.
    ValueError
        If ``batches`` is empty.
    """
    validate.module(model)
    chosen = L.select(model, layers, types=(nn.Linear,))
    stats: dict[str, InputStats] = {}
    training = model.training
    model.eval()
    calls: dict[str, int] = {}
    early = {"stop": False}  # set after a first full pass in which every chosen layer ran exactly once

    def hook(name: str, features: int):
        def record(module, inputs, output):
            x = inputs[0].detach().reshape(-1, features).float()
            gram = (x.T @ x).double()  # one batch in float32, accumulated over batches in float64
            absmax = x.abs().amax(0)
            if name in stats:
                s = stats[name]
                s.gram += gram
                torch.maximum(s.absmax, absmax, out=s.absmax)
                s.rows += len(x)
            else:
                stats[name] = InputStats(gram, absmax, len(x))
            calls[name] = calls.get(name, 0) + 1
            if early["stop"] and len(calls) == len(chosen):
                raise _Done  # the rest of the forward pass feeds no chosen layer
        return record

    handles = [layer.register_forward_hook(hook(name, layer.in_features)) for name, layer in chosen.items()]
    passes = 0
    try:
        # not inference_mode: the statistics may later feed modules that train; parametrized
        # weights (pruning masks) are computed once for all the batches, not on every call
        with torch.no_grad(), parametrize.cached():
            for batch in batches:
                calls.clear()
                try:
                    model(batch)
                except _Done:
                    pass
                if passes == 0:
                    early["stop"] = len(calls) == len(chosen) and all(n == 1 for n in calls.values())
                passes += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    if passes == 0:
        raise ValueError("batches must hold at least one batch")
    return stats


def inverse_hessian_factor(gram: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper Cholesky factor of the damped inverse Hessian, as GPTQ and SparseGPT use it.

    ``H = G + damp * mean(diag G) * I``, with every feature the data never excites (a zero on
    the diagonal) given ``H_jj = 1``; returns ``U`` upper triangular with ``U^T U = H^-1``, and
    the mask of those dead features. Row ``j`` of ``U`` holds, from column ``j`` on, the inverse
    Hessian of the features ``j, j+1, ...`` after the first ``j`` have been fixed, scaled by
    ``1 / sqrt([H_j^-1]_jj)``: what the column-by-column updates need.

    Parameters
    ----------
    gram
        ``sum x x^T`` (symmetric, positive semi-definite), ``(n, n)``.
    damp
        Dampening, relative to the mean diagonal (a number > 0).

    Returns
    -------
    tuple of torch.Tensor
        ``U`` (float64 ``(n, n)``) and ``dead`` (bool ``(n,)``).

    Raises
    ------
    ValueError
        If ``gram`` is not square or ``damp`` is not positive.

    References
    ----------
    frantar2023optq
    """
    validate.tensor(gram, "gram", dim=2, floating=True)
    if gram.shape[0] != gram.shape[1]:
        raise ValueError(f"gram must be square, got shape {tuple(gram.shape)}")
    damp = validate.number(damp, "damp", 0.0, low_open=True)
    h = gram.detach().double().clone()
    dead = h.diagonal() == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damp * h.diagonal().mean())
    inverse = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(inverse, upper=True), dead


def layerwise_(model: nn.Module, batches: Sequence, layers: L.Layers,
               transform: Callable[[str, nn.Linear, InputStats], None],
               groups: Sequence[Sequence[str]] | None = None) -> nn.Module:
    """Call ``transform(name, layer, stats)`` on each selected Linear layer with its input statistics, in place.

    The loop that walks a model for the one-shot methods, which each change one layer from what
    it receives. With ``groups=None`` the statistics of every layer come from one pass over the
    float model. With groups (for example the layers of each transformer block, in order), the
    groups are transformed one after another and each group's statistics are gathered on the
    model as transformed so far, so that a layer sees the inputs it will receive after
    compression, as GPTQ and SparseGPT do.

    Parameters
    ----------
    model
        The model to change (in place).
    batches
        Calibration inputs, one forward pass each (a sequence, read once per group).
    layers
        A selection of Linear layers.
    transform
        Changes one layer in place, given its name, the layer and its :class:`InputStats`.
    groups
        Layer names, in groups processed in order; every selected layer must be in one group.

    Returns
    -------
    nn.Module
        ``model``.

    Raises
    ------
    ValueError
        If ``groups`` does not cover the selected layers exactly once.
    """
    validate.module(model)
    chosen = L.select(model, layers, types=(nn.Linear,))
    if groups is None:
        order = [list(chosen)]
    else:
        order = [list(g) for g in groups]
        flat = [name for g in order for name in g]
        if sorted(flat) != sorted(chosen):
            raise ValueError("groups must list every selected layer exactly once")
    for group in order:
        stats = input_statistics(model, batches, group)
        for name in group:
            transform(name, chosen[name], stats[name])
    return model
