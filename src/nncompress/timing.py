"""CPU latency, measured so that comparisons survive other work on the machine.

Seven entry points, re-exported by :mod:`nncompress.measure`:

- :func:`measure_latency` times one model: the median of ``torch.utils.benchmark``'s
  ``blocked_autorange`` under ``torch.inference_mode``, with the thread count fixed, after
  warm-up; the smallest of a few such medians, since interference only ever adds time.
- :func:`measure_latencies` times several models that are to be compared *in turns*
  (round-robin, a fixed number of calls per round), and each model's latency is the median of
  its rounds: slow drifts in the
  machine's speed then reach every model alike, and the median of many rounds is stable where
  the fastest round is not.
- :func:`per_input_latencies` times models that run inputs one at a time, in turns, for models
  whose work depends on the input (early exit), :func:`calls_in_turns` any calls (text
  generation), in turns, and :func:`speedups_in_turns` the speed-ups of calls over one of them,
  as medians of each round's own ratios;
- :func:`thread_scaling` measures, right now, how much a second thread speeds up a reference
  matrix product: a notebook asserts claims about several threads only when it is high enough;
- :func:`module_times` splits one model's forward pass by groups of submodules, with
  ``torch.profiler``: where the time goes, as shares of the whole.

References: paszke2019pytorch, hoefler2015scientific
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils import benchmark

from . import validate

__all__ = ["MNIST_SHAPE", "measure_latency", "measure_latencies", "per_input_latencies", "calls_in_turns",
           "speedups_in_turns",
           "thread_scaling",
           "module_times"]

MNIST_SHAPE = (1, 28, 28)


def _batch(batch_size: int, input_shape: Sequence[int], inputs: torch.Tensor | None) -> torch.Tensor:
    """The timed batch: the first ``batch_size`` rows of ``inputs``, or a seeded random batch."""
    if inputs is None:
        return torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    if not isinstance(inputs, torch.Tensor) or len(inputs) < batch_size:
        raise ValueError(f"inputs must be a tensor with at least batch_size={batch_size} rows")
    return inputs[:batch_size]


def measure_latency(
    model: nn.Module,
    batch_size: int = 1,
    input_shape: Sequence[int] = MNIST_SHAPE,
    threads: int = 1,
    min_run_time: float = 0.2,
    warmup: int = 3,
    repeats: int = 3,
    inputs: torch.Tensor | None = None,
) -> float:
    """Median seconds of one forward pass of ``model`` on a batch, the best of ``repeats``.

    Uses ``torch.utils.benchmark.Timer(...).blocked_autorange`` with ``num_threads=threads``,
    under ``torch.inference_mode``, after ``warmup`` untimed calls. The measurement is repeated
    ``repeats`` times (``min_run_time`` seconds in all) and the smallest median is returned:
    interference from other processes only ever adds time, so the minimum is the most
    reproducible estimate. To compare models, use :func:`measure_latencies` instead.

    Parameters
    ----------
    model
        Any ``nn.Module``; it is put in eval mode.
    batch_size
        Inputs per forward pass (an int >= 1).
    input_shape
        Shape of one input, without the batch axis (used when ``inputs`` is None).
    threads
        Intra-op threads during the measurement (an int >= 1); the previous setting is restored.
    min_run_time
        Seconds of timing in all (a number > 0).
    warmup
        Untimed calls before timing (an int >= 0).
    repeats
        Timed measurements, of which the fastest is kept (an int >= 1).
    inputs
        Real inputs whose first ``batch_size`` rows form the batch, for a model whose work
        depends on its input (an early-exit network); a seeded random batch when None.

    Returns
    -------
    float
        Seconds per forward pass over the batch.

    Raises
    ------
    TypeError
        If ``model`` is not an ``nn.Module`` or a count is not an int.
    ValueError
        If a count or ``min_run_time`` is out of range, or ``inputs`` has fewer than
        ``batch_size`` rows.

    References
    ----------
    paszke2019pytorch, hoefler2015scientific
    """
    validate.module(model)
    batch_size = validate.integer(batch_size, "batch_size", 1)
    threads = validate.integer(threads, "threads", 1)
    repeats = validate.integer(repeats, "repeats", 1)
    warmup = validate.integer(warmup, "warmup", 0)
    min_run_time = validate.number(min_run_time, "min_run_time", 0.0, low_open=True)
    x = _batch(batch_size, input_shape, inputs)
    model.eval()

    def run():
        with torch.inference_mode():
            model(x)

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        for _ in range(warmup):
            run()
    finally:
        torch.set_num_threads(previous)
    timer = benchmark.Timer(stmt="run()", globals={"run": run}, num_threads=threads)
    return min(timer.blocked_autorange(min_run_time=min_run_time / repeats).median for _ in range(repeats))


def measure_latencies(
    models: Mapping[str, nn.Module],
    batch_size: int = 1,
    input_shape: Sequence[int] = MNIST_SHAPE,
    threads: int = 1,
    min_run_time: float = 0.2,
    rounds: int = 9,
    inputs: torch.Tensor | None = None,
) -> dict[str, float]:
    """Latencies (seconds) of several models that are to be compared, measured in turns.

    After three untimed warm-up calls per model (the last one timed, to choose how many calls
    make ``min_run_time / rounds`` seconds), each of ``rounds`` rounds times that many forward
    passes of every model in turn, under ``torch.inference_mode``, and each model's latency is
    the median of its rounds, per call. A shared CPU's speed drifts by tens of per cent over
    seconds (other virtual machines, memory traffic, clock changes); taken in turns, every model
    meets the same drift, and the median of its rounds is a stable estimate, where the fastest
    round of each model depends on which of them met the luckiest moment (two copies of one
    model can differ markedly in it).

    Parameters
    ----------
    models
        Names to ``nn.Module`` s (at least one), each run on the same batch.
    batch_size, input_shape, threads, inputs
        As for :func:`measure_latency`.
    min_run_time
        Seconds of timing per model over all the rounds (a number > 0).
    rounds
        Rounds of timing in turns (an int >= 1).

    Returns
    -------
    dict
        Each model's name mapped to its median round, in seconds per forward pass.

    Raises
    ------
    TypeError
        If ``models`` is not a mapping of modules, or a count is not an int.
    ValueError
        If ``models`` is empty or an argument is out of range.

    References
    ----------
    paszke2019pytorch, hoefler2015scientific
    """
    validate.mapping(models, "models")
    if not models:
        raise ValueError("models must hold at least one model")
    for name, model in models.items():
        validate.module(model, f"models[{name!r}]")
    batch_size = validate.integer(batch_size, "batch_size", 1)
    threads = validate.integer(threads, "threads", 1)
    rounds = validate.integer(rounds, "rounds", 1)
    min_run_time = validate.number(min_run_time, "min_run_time", 0.0, low_open=True)
    x = _batch(batch_size, input_shape, inputs)
    counts = {name: _calls_per_round(model.eval(), x, threads, min_run_time / rounds) for name, model in models.items()}

    def repeated(model, count):
        def call():
            for _ in range(count):
                model(x)
        return call

    times = _rounds_in_turns({name: repeated(model, counts[name]) for name, model in models.items()}, threads,
                             rounds, warmup=False)
    return {name: statistics.median(t) / counts[name] for name, t in times.items()}


def _calls_per_round(model: nn.Module, x: torch.Tensor, threads: int, seconds: float) -> int:
    """Three untimed warm-up calls of ``model(x)``; the number of calls (at least one) that the
    last of them says take about ``seconds``."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model(x)
            model(x)
            start = time.perf_counter()
            model(x)
            elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous)
    return max(1, round(seconds / elapsed)) if elapsed > 0 else 1


def per_input_latencies(models: Mapping[str, nn.Module], inputs: torch.Tensor, threads: int = 1,
                        rounds: int = 3) -> dict[str, float]:
    """Seconds per input of models run on ``inputs`` one at a time, the models timed in turns.

    For a model whose work depends on its input (an early-exit network), one timed batch says
    little: this runs every input through each model, one per call, and divides the wall time
    by their number. After ten untimed warm-up calls per model, each of ``rounds`` rounds does so
    for every model in turn (:func:`calls_in_turns`), and each model's figure is its median
    round, as in :func:`measure_latencies`.

    Parameters
    ----------
    models
        Names mapped to ``nn.Module`` s (at least one); each is put in eval mode.
    inputs
        A non-empty batch; row ``i`` is fed as a batch of one.
    threads
        Intra-op threads during the measurement (an int >= 1); the previous setting is restored.
    rounds
        Rounds of timing in turns (an int >= 1).

    Returns
    -------
    dict
        Each model's name mapped to its median round's seconds per input.

    Raises
    ------
    TypeError
        If ``models`` is not a mapping of modules, ``inputs`` not a tensor, or a count not an int.
    ValueError
        If ``models`` or ``inputs`` is empty, or a count is below 1.

    References
    ----------
    hoefler2015scientific
    """
    validate.mapping(models, "models")
    if not models:
        raise ValueError("models must hold at least one model")
    for name, model in models.items():
        validate.module(model, f"models[{name!r}]").eval()
    validate.tensor(inputs, "inputs")
    threads = validate.integer(threads, "threads", 1)
    rounds = validate.integer(rounds, "rounds", 1)

    def run(model):
        def call():
            for i in range(len(inputs)):
                model(inputs[i:i + 1])
        return call

    with torch.inference_mode():
        for model in models.values():  # warm-up: ten single inputs each
            for i in range(10):
                model(inputs[i % len(inputs)][None])
    seconds = calls_in_turns({name: run(model) for name, model in models.items()}, threads, rounds, warmup=False)
    return {name: t / len(inputs) for name, t in seconds.items()}


def _rounds_in_turns(calls: Mapping[str, Callable[[], object]], threads: int, rounds: int,
                     warmup: bool) -> dict[str, list[float]]:
    """Every round's seconds of each call, the calls run in turns (checked arguments as below)."""
    validate.mapping(calls, "calls")
    if not calls or not all(callable(c) for c in calls.values()):
        raise TypeError("calls must map names to callables (at least one)")
    threads = validate.integer(threads, "threads", 1)
    rounds = validate.integer(rounds, "rounds", 1)
    times: dict[str, list[float]] = {name: [] for name in calls}
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            for call in calls.values() if warmup else ():
                call()
            for _ in range(rounds):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return times


def calls_in_turns(calls: Mapping[str, Callable[[], object]], threads: int = 1, rounds: int = 3,
                   warmup: bool = True) -> dict[str, float]:
    """Seconds per call of several calls timed in turns: each round runs every call once, in order.

    With ``warmup``, the first round is preceded by one untimed call of each. Each call's figure
    is the median of its rounds: taken in turns, the calls meet the same drifts in the machine's
    speed, and the median, unlike the fastest round, does not hang on one lucky moment
    (:func:`measure_latencies`).

    Parameters
    ----------
    calls
        Names mapped to functions of no argument (for example, generating text with one model).
    threads
        Intra-op threads during the measurement (an int >= 1); the previous setting is restored.
    rounds
        Rounds of timing (an int >= 1).
    warmup
        Call each once, untimed, first.

    Returns
    -------
    dict
        Each name mapped to its median round's seconds.

    Raises
    ------
    TypeError, ValueError
        If ``calls`` is not a non-empty mapping of callables, or a count is out of range.

    References
    ----------
    hoefler2015scientific
    """
    return {name: statistics.median(t) for name, t in _rounds_in_turns(calls, threads, rounds, warmup).items()}


def speedups_in_turns(calls: Mapping[str, Callable[[], object]], baseline: str, threads: int = 1, rounds: int = 9,
                      warmup: bool = True) -> dict[str, float]:
    """Speed-ups over ``baseline`` of calls timed in turns: the median of the rounds' own ratios.

    Each round runs every call once, in order (as :func:`calls_in_turns`), and gives each call
    the ratio of the baseline's seconds to its own *in that round*. The median of these paired
    ratios is steadier than the ratio of two medians where the machine's speed drifts within a
    run: the two calls of a pair are timed moments apart, so a drift reaches both.

    Parameters
    ----------
    calls
        Names mapped to functions of no argument; ``baseline`` among them.
    baseline
        The name of the call the others are compared with.
    threads, rounds, warmup
        As for :func:`calls_in_turns`.

    Returns
    -------
    dict
        Each name mapped to its median speed-up over the baseline (the baseline's is 1.0).

    Raises
    ------
    TypeError, ValueError
        As for :func:`calls_in_turns`; ValueError if ``baseline`` is not a name of ``calls``.

    References
    ----------
    hoefler2015scientific
    """
    validate.mapping(calls, "calls")
    if baseline not in calls:
        raise ValueError(f"baseline must be one of the names of calls {sorted(map(str, calls))}, got {baseline!r}")
    times = _rounds_in_turns(calls, threads, rounds, warmup)
    return {name: statistics.median([b / t for b, t in zip(times[baseline], times[name])]) for name in calls}


def thread_scaling(threads: int = 2, size: int = 512, rounds: int = 5, min_run_time: float = 0.3) -> float:
    """The measured speed-up of a reference workload at ``threads`` threads over 1 thread, now.

    The workload is a seeded ``size x size`` float32 matrix product, which torch's BLAS splits
    evenly over threads: with ``threads`` free cores the speed-up approaches ``threads``; when
    other work keeps a core busy it falls towards 1, or below (the threads wait for each other).
    The two thread counts are timed in turns, ``rounds`` rounds of ``min_run_time / rounds``
    seconds in all, each keeping its median round, as in :func:`measure_latencies`. Notebooks
    assert claims about several threads only when this is high enough (the book asks
    ``thread_scaling() >= 1.5``).

    Parameters
    ----------
    threads
        The thread count compared with 1 (an int >= 2).
    size
        The side of the square matrices (an int >= 16).
    rounds
        Rounds of timing in turns (an int >= 1).
    min_run_time
        Seconds of timing in all (a number > 0).

    Returns
    -------
    float
        Seconds per product on 1 thread divided by seconds per product on ``threads`` threads.

    Raises
    ------
    TypeError
        If an argument is not a number of the right kind.
    ValueError
        If an argument is outside its range.

    References
    ----------
    paszke2019pytorch, hoefler2015scientific
    """
    threads = validate.integer(threads, "threads", 2)
    size = validate.integer(size, "size", 16)
    rounds = validate.integer(rounds, "rounds", 1)
    min_run_time = validate.number(min_run_time, "min_run_time", 0.0, low_open=True)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)  # (size, size) each
    times: dict[int, list[float]] = {1: [], threads: []}
    for _ in range(rounds):
        for t, kept in times.items():
            timer = benchmark.Timer(stmt="torch.mm(a, b)", globals={"torch": torch, "a": a, "b": b}, num_threads=t)
            kept.append(timer.blocked_autorange(min_run_time=min_run_time / rounds / 2).median)
    return statistics.median(times[1]) / statistics.median(times[threads])


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 inside the block: the profiler's backend logs its start and stop there."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def module_times(model: nn.Module, inputs: torch.Tensor, groups: Mapping[str, Sequence[str]], threads: int = 1,
                 repeats: int = 10) -> dict[str, float]:
    """Seconds per forward pass spent inside groups of submodules, measured with ``torch.profiler``.

    Each submodule a group names is wrapped in a profiler label (``record_function``) for the
    duration of its forward pass; the model runs ``repeats`` times on ``inputs`` (after one
    warm-up pass) and each group's time is the total of its modules' labels divided by
    ``repeats``. ``"total"`` is the whole forward pass, measured the same way, so the shares
    ``time / total`` are what the breakdown is for: the profiler's own overhead inflates every
    time a little.

    Parameters
    ----------
    model
        Any module.
    inputs
        One batch of model inputs.
    groups
        Group name mapped to names or glob patterns of submodules (:func:`nncompress.layers.select`
        with any module type). A module should belong to one group, and no group should hold
        both a module and one of its submodules.
    threads
        Intra-op threads (an int >= 1).
    repeats
        Forward passes profiled (an int >= 1).

    Returns
    -------
    dict
        Group name mapped to seconds per forward pass, and ``"total"``.

    Raises
    ------
    TypeError, ValueError
        For a bad model, selection or count.

    References
    ----------
    paszke2019pytorch
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    from . import layers as L

    validate.module(model)
    validate.mapping(groups, "groups")
    threads = validate.integer(threads, "threads", 1)
    repeats = validate.integer(repeats, "repeats", 1)
    label = {}
    for group, names in groups.items():
        for name in L.select(model, list(names), types=(nn.Module,)):
            label[name] = f"group::{group}"
    modules = dict(model.named_modules())
    open_labels: list = []
    handles = []
    for name, tag in label.items():
        handles.append(modules[name].register_forward_pre_hook(
            lambda m, args, tag=tag: open_labels.append(record_function(tag).__enter__())))
        handles.append(modules[name].register_forward_hook(lambda m, args, out: open_labels.pop().__exit__(None, None, None)))
    previous = torch.get_num_threads()
    model.eval()
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model(inputs)
            with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(repeats):
                    with record_function("group::total"):
                        model(inputs)
    finally:
        torch.set_num_threads(previous)
        for handle in handles:
            handle.remove()
    totals = {event.key: event.cpu_time_total for event in prof.key_averages() if event.key.startswith("group::")}
    return {group: totals.get(f"group::{group}", 0.0) / repeats / 1e6 for group in [*groups, "total"]}
