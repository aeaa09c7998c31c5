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

import contextlib
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
    replay = _Replay.plan(model, batches, order)
    for i, group in enumerate(order):
        with replay.during_pass(i) if replay is not None else contextlib.nullcontext():
            stats = input_statistics(model, batches, group)
        for name in group:
            transform(name, chosen[name], stats[name])
    return model


def _enclosing(names: Sequence[str]) -> str:
    """The deepest module path that holds every one of ``names`` ('' for the model itself)."""
    common = []
    for parts in zip(*(name.split(".") for name in names)):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _copy(output):
    """A copy of a module's output, its tensors cloned (a later module may change them in place)."""
    if isinstance(output, torch.Tensor):
        return output.clone()
    if isinstance(output, (tuple, list)):
        return type(output)(_copy(o) for o in output)
    return output


class _Replay:
    """Skips, in :func:`layerwise_`'s calibration passes, the blocks whose groups are done.

    The layers of group ``i`` lie in one enclosing module, its block. When the blocks run one
    after the other, each once per forward pass and in the order of the groups, and every selected
    layer runs inside its own block (checked on the first batch), a block's output stops changing
    once its group is transformed: its weights are final and all it reads ran before it. The pass
    for group ``i`` records block ``i - 1``'s output on each batch, and later passes return the
    recorded outputs instead of running blocks ``0 .. i - 1`` again; the statistics are those of
    full passes, bit for bit, for a fraction of the work (GPTQ's reference code goes block by block
    for the same reason).
    """

    def __init__(self, blocks: list[nn.Module]):
        self.blocks = blocks
        self.outputs: list[list] = [[] for _ in blocks]

    @classmethod
    def plan(cls, model: nn.Module, batches: Sequence, order: list[list[str]]) -> _Replay | None:
        """The replay for these groups, or None where blocks cannot be skipped safely."""
        names = [_enclosing(group) for group in order]
        if len(order) < 2 or "" in names or any(a == b or a.startswith(b + ".")
                                                for i, a in enumerate(names) for b in names[:i] + names[i + 1:]):
            return None
        modules = dict(model.named_modules())
        blocks = [modules[name] for name in names]
        first = next(iter(batches), None)
        return cls(blocks) if first is not None and _in_sequence(model, first, blocks, order, modules) else None

    @contextmanager
    def during_pass(self, i: int):
        """Blocks ``0 .. i - 2`` replay their outputs and block ``i - 1`` records its own."""
        for j in range(i - 1):
            outputs = iter(self.outputs[j])
            self.blocks[j].forward = lambda *args, _outputs=outputs, **kwargs: _copy(next(_outputs))
        record = self.outputs[i - 1] if i >= 1 else None
        handle = self.blocks[i - 1].register_forward_hook(lambda m, a, out: record.append(_copy(out))) if i else None
        try:
            yield
        finally:
            for j in range(i - 1):
                del self.blocks[j].forward
            if handle is not None:
                handle.remove()


def _in_sequence(model: nn.Module, batch, blocks: list[nn.Module], order: list[list[str]], modules) -> bool:
    """Whether, on ``batch``, the blocks run once each in order, every group's layers inside their own."""
    events: list[tuple[str, int]] = []
    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(lambda m, a, i=i: events.append(("start", i))))
        handles.append(block.register_forward_hook(lambda m, a, out, i=i: events.append(("end", i))))
        handles += [modules[name].register_forward_pre_hook(lambda m, a, i=i: events.append(("layer", i)))
                    for name in order[i]]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    if [e for e in events if e[0] != "layer"] != [(kind, i) for i in range(len(blocks)) for kind in ("start", "end")]:
        return False
    inside = None
    for kind, i in events:
        if kind == "layer" and inside != i:
            return False
        inside = i if kind == "start" else None if kind == "end" else inside
    return True
