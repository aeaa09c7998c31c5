"""One harness that profiles any model: accuracy, parameters, non-zeros, bytes, FLOPs, latency.

Definitions used throughout the book:

- **parameters**: elements of the model's effective weight tensors. A parametrized weight
  (``torch.nn.utils.parametrize``) counts once, as the tensor the forward pass uses; a tensor
  shared by several modules counts once. Buffers (e.g. masks) are not parameters.
- **non-zeros**: elements of those effective tensors that are not exactly zero (for a sparse
  tensor, its stored values that are not zero; its parameters are its logical size).
- **bytes**: the length of ``torch.save(model.state_dict())`` written to memory, unless a
  custom encoding is counted instead (``nbytes=``), e.g. the length of a compressed file.
- **FLOPs**: floating-point operations of one forward pass on *one* input, as counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts 2; only matrix products
  and convolutions are counted, not activations or pooling; attention counts its two matrix
  products, whichever kernel runs it). A product with a sparse (CSR)
  matrix counts the work it does: 2 FLOPs per stored value and output column. The int8
  layers of ``torch.ao.nn.quantized`` count their integer multiply-adds the same way.
- **latency**: median wall time of one forward pass over a batch, from
  ``torch.utils.benchmark.Timer.blocked_autorange`` under ``torch.inference_mode``, after
  warm-up, with the thread count fixed and reported (:mod:`nncompress.timing`). Models that are
  compared are timed in turns, round after round, and each model's latency is the median of its
  rounds (:func:`measure_latencies`).

The latency functions live in :mod:`nncompress.timing`, the :class:`Profile` record and the
tables in :mod:`nncompress.tables`; both are re-exported here, so notebooks use
``nc.measure`` for everything. :func:`pareto_front` is the package's one Pareto front.

References: paszke2019pytorch, hoefler2015scientific, blalock2020state
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import layers as L
from . import validate
from .flops import _check_model, _int8_layer, count_flops, flops_by_module
from .tables import Profile, Table, comparison_table, environment, write_results
from .timing import (MNIST_SHAPE, calls_in_turns, measure_latencies, measure_latency, module_times,
                     per_input_latencies, speedups_in_turns, thread_scaling)
from .train import evaluate

__all__ = [
    "Profile",
    "Table",
    "effective_tensors",
    "count_params",
    "count_nonzeros",
    "serialized_bytes",
    "count_flops",
    "measure_latency",
    "measure_latencies",
    "profile",
    "profile_many",
    "layer_breakdown",
    "flops_by_module",
    "group_breakdown",
    "comparison_table",
    "environment",
    "write_results",
    "pareto_front",
    "thread_scaling",
    "per_input_latencies",
    "calls_in_turns",
    "speedups_in_turns",
    "module_times",
    "MNIST_SHAPE",
]


def _check_batch_sizes(batch_sizes) -> tuple[int, ...]:
    """The batch sizes as a tuple of ints >= 1."""
    return tuple(validate.integer(b, "batch_sizes entries", 1) for b in batch_sizes)


def effective_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight tensors the forward pass uses, by qualified name, each shared tensor once.

    For a parametrized weight this is the parametrization's output (e.g. ``mask * weight``),
    named like a plain weight (``fc1.weight``). For an int8 layer of ``torch.ao.nn.quantized``
    it is the dequantized weight and the bias.

    Parameters
    ----------
    model
        Any ``nn.Module``.

    Returns
    -------
    dict
        Qualified names (``"fc1.weight"``) mapped to detached tensors.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.

    References
    ----------
    paszke2019pytorch
    """
    _check_model(model)
    tensors, seen = {}, set()
    with torch.no_grad():
        for prefix, module in model.named_modules():
            if isinstance(module, parametrize.ParametrizationList):
                continue  # its ``original`` is reached through the owning module below
            if _int8_layer(module):
                weight, bias = module._weight_bias()
                tensors[f"{prefix}.weight"] = weight.dequantize()
                if bias is not None:
                    tensors[f"{prefix}.bias"] = bias.detach()
                continue
            names = list(module._parameters)
            if parametrize.is_parametrized(module):
                names += [n for n in module.parametrizations if n not in names]
            for name in names:
                if parametrize.is_parametrized(module, name):
                    key = id(module.parametrizations[name].original)
                    value = getattr(module, name)
                else:
                    value = module._parameters[name]
                    key = id(value)
                if value is None or key in seen:
                    continue
                seen.add(key)
                tensors[f"{prefix}.{name}" if prefix else name] = value.detach()
    return tensors


def count_params(model: nn.Module) -> int:
    """Number of elements of the effective weight tensors (see :func:`effective_tensors`).

    Parameters
    ----------
    model
        Any ``nn.Module``.

    Returns
    -------
    int
        The parameter count; a tensor shared by several layers counts once.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.

    References
    ----------
    paszke2019pytorch
    """
    return sum(t.numel() for t in effective_tensors(model).values())


def count_nonzeros(model: nn.Module) -> int:
    """Number of elements of the effective weight tensors that are not exactly zero.

    For a sparse (COO or CSR) tensor, the non-zero values among those it stores.

    Parameters
    ----------
    model
        Any ``nn.Module``.

    Returns
    -------
    int
        The number of weights that are not exactly zero.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.

    References
    ----------
    han2015learning
    """
    return sum(int(torch.count_nonzero(t.values() if t.layout != torch.strided else t))
               for t in effective_tensors(model).values())


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` written to an in-memory buffer.

    Parameters
    ----------
    model
        Any ``nn.Module``.

    Returns
    -------
    int
        The length of the serialized state, as a file written through a handle would have.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.

    References
    ----------
    paszke2019pytorch
    """
    _check_model(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def profile(
    model: nn.Module,
    name: str | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    input_shape: Sequence[int] = MNIST_SHAPE,
    batch_sizes: Iterable[int] = (1, 256),
    threads: int = 1,
    nbytes: int | Callable[[nn.Module], int] | None = None,
    min_run_time: float = 0.2,
) -> Profile:
    """Profile ``model``: accuracy on ``data`` (if given), size, FLOPs and latency per batch size.

    Parameters
    ----------
    model
        Any ``nn.Module``.
    name
        The name in tables (the class name when None).
    data
        ``(inputs, labels)`` for the accuracy, or None to skip it.
    input_shape
        The shape of one input, without the batch axis (for FLOPs and latency).
    batch_sizes
        The batch sizes to time (ints >= 1); ``()`` skips the latency measurement.
    threads
        Intra-op threads for the timing (an int >= 1).
    nbytes
        A custom encoding counted instead of the state_dict: an int (e.g. a file's size) or a
        function of the model giving one.
    min_run_time
        Seconds of timing per batch size (see :func:`measure_latency`).

    Returns
    -------
    Profile
        Everything measured.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or a count is not an int.
    ValueError
        If ``threads`` or a batch size is below 1, or ``nbytes`` does not give an int >= 0.

    References
    ----------
    blalock2020state
    """
    _check_model(model)
    threads = validate.integer(threads, "threads", 1)
    batch_sizes = _check_batch_sizes(batch_sizes)
    if nbytes is None:
        size, source = serialized_bytes(model), "state_dict"
    else:
        size = nbytes(model) if callable(nbytes) else nbytes
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"nbytes must give a non-negative int, got {size!r}")
        source = "custom"
    accuracy = None
    if data is not None:
        x, y = data
        accuracy = evaluate(model, x, y)
    return Profile(
        name=name or type(model).__name__,
        accuracy=accuracy,
        params=count_params(model),
        nonzeros=count_nonzeros(model),
        bytes=size,
        flops=count_flops(model, input_shape),
        latency={b: measure_latency(model, b, input_shape, threads, min_run_time) for b in batch_sizes},
        threads=threads,
        bytes_source=source,
    )


def profile_many(
    models: Mapping[str, nn.Module],
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    input_shape: Sequence[int] = MNIST_SHAPE,
    batch_sizes: Iterable[int] = (1, 256),
    threads: int = 1,
    nbytes: Mapping[str, int | Callable[[nn.Module], int]] | None = None,
    min_run_time: float = 0.2,
    rounds: int = 9,
) -> list[Profile]:
    """:func:`profile` for every model of ``models``, with the latencies measured in turns.

    The latencies come from :func:`measure_latencies` (round-robin, the median of each model's rounds), so
    that the models can be compared: use this, not one :func:`profile` per model, for a table
    whose speed-ups are read against each other.

    Parameters
    ----------
    models
        Names mapped to ``nn.Module`` s.
    data, input_shape, batch_sizes, threads, min_run_time
        As for :func:`profile`.
    nbytes
        Names mapped to custom encodings, as in :func:`profile`; models it leaves out use their
        state_dict.
    rounds
        Rounds of timing in turns, as for :func:`measure_latencies`.

    Returns
    -------
    list of Profile
        One per model, in the order of ``models``.

    Raises
    ------
    TypeError
        If ``models`` is not a mapping of modules.
    ValueError
        If ``nbytes`` names a model that is not in ``models``, or an argument is out of range.

    References
    ----------
    blalock2020state, hoefler2015scientific
    """
    validate.mapping(models, "models")
    nbytes = dict(nbytes or {})
    unknown = sorted(set(nbytes) - set(models))
    if unknown:
        raise ValueError(f"nbytes names models that are not in models: {unknown}")
    batch_sizes = _check_batch_sizes(batch_sizes)
    profiles = [profile(model, name, data, input_shape, (), threads, nbytes.get(name)) for name, model in models.items()]
    for b in batch_sizes:
        seconds = measure_latencies(models, b, input_shape, threads, min_run_time, rounds)
        for p, name in zip(profiles, models):
            p.latency[b] = seconds[name]
    return profiles


def layer_breakdown(model: nn.Module, input_shape: Sequence[int] = MNIST_SHAPE,
                    inputs: torch.Tensor | None = None) -> list[dict]:
    """Per leaf layer that holds weights: ``{"layer", "params", "bytes", "flops"}``.

    Parameters
    ----------
    model
        Any ``nn.Module``.
    input_shape
        The shape of one input, without the batch axis.
    inputs
        A batch of one real input instead of zeros, as in :func:`count_flops`.

    Returns
    -------
    list of dict
        One row per module that owns weights, in ``named_modules`` order: ``params`` as in
        :func:`count_params`, ``bytes`` the raw storage of the module's state (elements times
        element size, no file overhead), ``flops`` for one input.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module``.

    References
    ----------
    han2015learning
    """
    flops = flops_by_module(model, input_shape, inputs)
    tensors = effective_tensors(model)
    rows = []
    for prefix, module in model.named_modules():
        own = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[0] == prefix}
        if not own:
            continue
        state = module.state_dict()
        rows.append({
            "layer": prefix,
            "params": sum(t.numel() for t in own.values()),
            "bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "flops": flops.get(prefix, 0),
        })
    return rows


def group_breakdown(model: nn.Module, groups: Mapping[str, Sequence[str]], input_shape: Sequence[int] = MNIST_SHAPE,
                    inputs: torch.Tensor | None = None) -> list[dict]:
    """Parameters, raw bytes and FLOPs of groups of submodules, each including its submodules.

    Parameters
    ----------
    model
        Any ``nn.Module``.
    groups
        Group name mapped to names or glob patterns of submodules of any type
        (:func:`nncompress.layers.select`). A submodule should belong to one group only.
    input_shape, inputs
        The input for the FLOPs, as in :func:`count_flops`.

    Returns
    -------
    list of dict
        One row per group, in order: ``{"group", "params", "bytes", "flops"}``, then a row
        ``"rest"`` with what no group holds (the model's total minus the groups').

    Raises
    ------
    TypeError, ValueError
        For a bad model or selection, or groups that overlap.
    """
    _check_model(model)
    validate.mapping(groups, "groups")
    flops = flops_by_module(model, input_shape, inputs)
    tensors = effective_tensors(model)
    rows, claimed = [], set()
    for group, names in groups.items():
        chosen = L.select(model, list(names), types=(nn.Module,))
        own = {k for k in tensors if any(k.startswith(f"{name}.") for name in chosen)}
        if own & claimed:
            raise ValueError(f"groups overlap: group {group!r} holds tensors of an earlier group")
        claimed |= own
        rows.append({"group": group, "params": sum(tensors[k].numel() for k in own),
                     "bytes": sum(tensors[k].numel() * tensors[k].element_size() for k in own),
                     "flops": sum(flops.get(name, 0) for name in chosen)})
    rest = set(tensors) - claimed
    rows.append({"group": "rest", "params": sum(tensors[k].numel() for k in rest),
                 "bytes": sum(tensors[k].numel() * tensors[k].element_size() for k in rest),
                 "flops": flops.get("", 0) - sum(r["flops"] for r in rows)})
    return rows


def _cost(profile: Profile, axis: str) -> float:
    """The cost of ``profile`` on ``axis`` (an attribute, or latency at a batch size)."""
    if axis.startswith("latency_b"):
        return profile.latency[int(axis.removeprefix("latency_b"))]
    return getattr(profile, axis)


def pareto_front(profiles: Sequence[Profile], axis: str = "bytes") -> list[Profile]:
    """The profiles that no other beats on both quality and ``axis``, cheapest first.

    Quality is the test error for profiles with an accuracy, or the score (higher is better,
    e.g. Spearman) for profiles with a ``score``; all profiles must have the same kind. A
    profile is dominated when another has a quality no worse and a cost no higher, and one of
    them strictly better. Profiles tied exactly (same error and same cost) do not dominate each other, so all
    of them are on the front. This is the package's one Pareto front;
    :func:`nncompress.plotting.pareto_plot` draws it.

    Parameters
    ----------
    profiles
        A non-empty sequence of :class:`Profile`, each with an accuracy, or each with a score.
    axis
        ``"bytes"``, ``"params"``, ``"nonzeros"``, ``"flops"`` or ``"latency_b<batch>"`` for a
        batch size every profile was timed at.

    Returns
    -------
    list of Profile
        The front, by increasing cost, then by quality (best first).

    Raises
    ------
    TypeError
        If ``profiles`` is empty, or holds something other than a Profile with an accuracy (or,
        for all of them, a score).
    ValueError
        If ``axis`` is not one of the above.

    References
    ----------
    blalock2020state
    """
    profiles = list(profiles)
    if not profiles or not all(isinstance(p, Profile) for p in profiles) or not (
            all(p.accuracy is not None for p in profiles)
            or all(p.accuracy is None and p.score is not None for p in profiles)):
        raise TypeError("profiles must be a non-empty sequence of Profile, each with an accuracy or each with a score")
    allowed = ("bytes", "params", "nonzeros", "flops")
    if axis not in allowed and not (axis.startswith("latency_b") and all(
            axis.removeprefix("latency_b").isdigit() and int(axis.removeprefix("latency_b")) in p.latency for p in profiles)):
        raise ValueError(f"axis must be one of {allowed} or latency_b<batch> for a measured batch size, got {axis!r}")
    points = [(_cost(p, axis), p.shortfall, p) for p in profiles]
    front = [p for c, e, p in points
             if not any(c2 <= c and e2 <= e and (c2 < c or e2 < e) for c2, e2, _ in points)]
    return sorted(front, key=lambda p: (_cost(p, axis), p.shortfall))
