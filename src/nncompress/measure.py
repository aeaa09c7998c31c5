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
  and convolutions are counted, not activations or pooling). A product with a sparse (CSR)
  matrix counts the work it does: 2 FLOPs per stored value and output column. The int8
  layers of ``torch.ao.nn.quantized`` count their integer multiply-adds the same way.
- **latency**: median wall time of one forward pass over a batch, from
  ``torch.utils.benchmark.Timer.blocked_autorange`` under ``torch.inference_mode``, after
  warm-up, with the thread count fixed and reported; the smallest of a few such medians, to
  discard transient interference from other processes.
"""

from __future__ import annotations

import csv
import html
import io
import math
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

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
    "comparison_table",
    "environment",
    "write_results",
    "pareto_front",
]

MNIST_SHAPE = (1, 28, 28)


def _check_model(model) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_mapping(models) -> None:
    if not isinstance(models, Mapping):
        raise TypeError(f"models must be a mapping of names to modules, got {type(models).__name__}")


def _int8_layer(module: nn.Module) -> bool:
    """Whether ``module`` is one of torch's int8 Linear/Conv layers (weights in packed params)."""
    from torch.ao.nn import quantized as nnq
    return isinstance(module, (nnq.Linear, nnq.Conv1d, nnq.Conv2d, nnq.Conv3d))


def effective_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight tensors the forward pass uses, by qualified name, each shared tensor once.

    For a parametrized weight this is the parametrization's output (e.g. ``mask * weight``),
    named like a plain weight (``fc1.weight``). For an int8 layer of ``torch.ao.nn.quantized``
    it is the dequantized weight and the bias.
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
    """Number of elements of the effective weight tensors (see :func:`effective_tensors`)."""
    return sum(t.numel() for t in effective_tensors(model).values())


def count_nonzeros(model: nn.Module) -> int:
    """Number of elements of the effective weight tensors that are not exactly zero.

    For a sparse (COO or CSR) tensor, the non-zero values among those it stores.
    """
    return sum(int(torch.count_nonzero(t.values() if t.layout != torch.strided else t))
               for t in effective_tensors(model).values())


def serialized_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` written to an in-memory buffer."""
    _check_model(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def _sparse_addmm_flops(bias, sparse, dense, *args, out_val=None, **kwargs) -> int:
    """A sparse-dense product does 2 FLOPs per stored value of the sparse matrix and dense column."""
    stored = sparse.values().numel() if sparse.layout != torch.strided else sparse.numel()
    return 2 * stored * dense.shape[1]


_sparse_addmm_flops._get_raw = True  # FlopCounterMode passes the tensors, not only their shapes


def _flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode, also counting sparse (CSR) matrix products by their stored values."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten._sparse_addmm: _sparse_addmm_flops})


def count_flops(model: nn.Module, input_shape: Sequence[int] = MNIST_SHAPE) -> int:
    """FLOPs of one forward pass on a single input of shape ``input_shape`` (no batch axis)."""
    _check_model(model)
    x = torch.zeros(1, *input_shape)
    counter = _flop_counter()
    int8_ops = []

    def count_int8(module, inputs, output):  # 2 ops per multiply-add, as for floating point
        weight = module._weight_bias()[0]
        int8_ops.append(2 * output.numel() * weight[0].numel())

    hooks = [m.register_forward_hook(count_int8) for m in model.modules() if _int8_layer(m)]
    try:
        with torch.no_grad(), counter:
            model.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    return int(counter.get_total_flops()) + sum(int8_ops)


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
    """Median seconds of one forward pass on a random batch of ``batch_size`` inputs.

    With ``inputs``, the batch is their first ``batch_size`` rows instead: use real data for a
    model whose work depends on its input, such as an early-exit network.

    Uses ``torch.utils.benchmark.Timer(...).blocked_autorange`` with ``num_threads=threads``,
    under ``torch.inference_mode``, after ``warmup`` untimed calls. The measurement is repeated
    ``repeats`` times (``min_run_time`` seconds in all) and the smallest median is returned:
    interference from other processes only ever adds time, so the minimum is the most
    reproducible estimate.
    """
    _check_model(model)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("threads", threads)
    _check_positive_int("repeats", repeats)
    if inputs is None:
        x = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(0))
    elif not isinstance(inputs, torch.Tensor) or len(inputs) < batch_size:
        raise ValueError(f"inputs must be a tensor with at least batch_size={batch_size} rows")
    else:
        x = inputs[:batch_size]
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
    rounds: int = 5,
    inputs: torch.Tensor | None = None,
) -> dict[str, float]:
    """Latencies (seconds) of several models that are to be compared, measured in turns.

    Each of ``rounds`` rounds times every model once with :func:`measure_latency` (for
    ``min_run_time / rounds`` seconds; warm-up calls in the first round only), and each model
    keeps its fastest round. Interference from other processes that lasts a second or two then
    slows all the models of the rounds it overlaps, instead of whichever model was being measured
    at the time, and taking the fastest round discards it. Ratios between the models are much
    more reproducible than with one :func:`measure_latency` call per model, one after the other.
    """
    _check_mapping(models)
    if not models:
        raise ValueError("models must hold at least one model")
    for model in models.values():
        _check_model(model)
    _check_positive_int("rounds", rounds)
    best = dict.fromkeys(models, math.inf)
    for r in range(rounds):
        for name, model in models.items():
            seconds = measure_latency(model, batch_size, input_shape, threads, min_run_time / rounds,
                                      warmup=3 if r == 0 else 0, repeats=1, inputs=inputs)
            best[name] = min(best[name], seconds)
    return best


@dataclass
class Profile:
    """Everything the harness measured about one model. Latencies are in seconds per batch."""

    name: str
    accuracy: float | None
    params: int
    nonzeros: int
    bytes: int
    flops: int
    latency: dict[int, float] = field(default_factory=dict)
    threads: int = 1
    bytes_source: str = "state_dict"

    @property
    def error(self) -> float | None:
        return None if self.accuracy is None else 1.0 - self.accuracy

    def as_dict(self) -> dict:
        """A flat dictionary (latency keys become ``latency_b<batch>_s``) for CSV or JSON."""
        row = {k: v for k, v in asdict(self).items() if k != "latency"}
        row.update({f"latency_b{b}_s": t for b, t in sorted(self.latency.items())})
        return row


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

    ``nbytes`` counts a custom encoding instead of the state_dict: an int (e.g. a file's size)
    or a function of the model. ``batch_sizes=()`` skips the latency measurement.
    """
    _check_model(model)
    _check_positive_int("threads", threads)
    batch_sizes = tuple(batch_sizes)
    for b in batch_sizes:
        _check_positive_int("batch_sizes entries", b)
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
    rounds: int = 5,
) -> list[Profile]:
    """:func:`profile` for every model of ``models`` (name to module), with the latencies measured
    in turns by :func:`measure_latencies`, so that the models can be compared. ``nbytes`` maps
    names to custom encodings, as in :func:`profile`; models it leaves out use their state_dict.
    """
    _check_mapping(models)
    nbytes = dict(nbytes or {})
    unknown = sorted(set(nbytes) - set(models))
    if unknown:
        raise ValueError(f"nbytes names models that are not in models: {unknown}")
    batch_sizes = tuple(batch_sizes)
    for b in batch_sizes:
        _check_positive_int("batch_sizes entries", b)
    profiles = [profile(model, name, data, input_shape, (), threads, nbytes.get(name)) for name, model in models.items()]
    for b in batch_sizes:
        seconds = measure_latencies(models, b, input_shape, threads, min_run_time, rounds)
        for p, name in zip(profiles, models):
            p.latency[b] = seconds[name]
    return profiles


def layer_breakdown(model: nn.Module, input_shape: Sequence[int] = MNIST_SHAPE) -> list[dict]:
    """Per leaf layer that holds weights: ``{"layer", "params", "bytes", "flops"}``.

    ``bytes`` is the raw storage of the layer's state (elements times element size, no file
    overhead); ``flops`` is for one input.
    """
    _check_model(model)
    x = torch.zeros(1, *input_shape)
    counter = _flop_counter()
    with torch.no_grad(), counter:
        model.eval()(x)
    counts = counter.get_flop_counts()
    top = type(model).__name__
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
            "flops": int(sum(counts.get(f"{top}.{prefix}", {}).values())),
        })
    return rows


def environment() -> dict:
    """Provenance of a measurement: CPU, thread count, torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def _cost(profile: Profile, axis: str) -> float:
    if axis.startswith("latency_b"):
        return profile.latency[int(axis.removeprefix("latency_b"))]
    return getattr(profile, axis)


def pareto_front(profiles: Sequence[Profile], axis: str = "bytes") -> list[Profile]:
    """The profiles that no other beats on both test error and ``axis``, cheapest first.

    ``axis`` is ``"bytes"``, ``"params"``, ``"nonzeros"``, ``"flops"`` or ``"latency_b<batch>"``.
    A profile is dominated when another has an error and a cost no higher, and one of them lower.
    Every profile needs an accuracy.
    """
    profiles = list(profiles)
    if not profiles or not all(isinstance(p, Profile) and p.accuracy is not None for p in profiles):
        raise TypeError("profiles must be a non-empty sequence of Profile, each with an accuracy")
    allowed = ("bytes", "params", "nonzeros", "flops")
    if axis not in allowed and not (axis.startswith("latency_b") and all(
            axis.removeprefix("latency_b").isdigit() and int(axis.removeprefix("latency_b")) in p.latency for p in profiles)):
        raise ValueError(f"axis must be one of {allowed} or latency_b<batch> for a measured batch size, got {axis!r}")
    points = [(_cost(p, axis), p.error, p) for p in profiles]
    front = [p for c, e, p in points
             if not any(c2 <= c and e2 <= e and (c2 < c or e2 < e) for c2, e2, _ in points)]
    return sorted(front, key=lambda p: (_cost(p, axis), p.error))


def write_results(profiles: Sequence[Profile], path, **metadata) -> dict:
    """Write ``profiles`` as JSON to ``path`` with their provenance; return what was written.

    The file holds ``environment`` (:func:`environment`: CPU, threads, torch and Python versions),
    any keyword ``metadata`` (e.g. the dataset or the notebook), and ``results``, one
    :meth:`Profile.as_dict` per profile.
    """
    import json

    profiles = list(profiles)
    if not profiles or not all(isinstance(p, Profile) for p in profiles):
        raise TypeError("profiles must be a non-empty sequence of Profile")
    document = {"environment": environment(), **metadata, "results": [p.as_dict() for p in profiles]}
    with open(path, "w") as f:
        json.dump(document, f, indent=1)
    return document


class Table:
    """A small table that renders as HTML and Markdown in notebooks and writes CSV."""

    def __init__(self, columns: Sequence[str], rows: Sequence[Sequence], caption: str | None = None):
        if any(len(r) != len(columns) for r in rows):
            raise ValueError("every row must have one value per column")
        self.columns, self.rows, self.caption = list(columns), [list(r) for r in rows], caption

    @classmethod
    def from_records(cls, records: Sequence[dict], caption: str | None = None) -> "Table":
        """A table from a list of dicts with the same keys (the first one's keys are the columns)."""
        if not records:
            raise ValueError("records must not be empty")
        columns = list(records[0])
        return cls(columns, [[r[c] for c in columns] for r in records], caption)

    @staticmethod
    def _fmt(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, r)) for r in self.rows]

    def to_csv(self, path_or_buffer) -> None:
        """Write the raw (unformatted) values as CSV to a path or a text buffer."""
        if isinstance(path_or_buffer, (str, bytes)) or hasattr(path_or_buffer, "__fspath__"):
            with open(path_or_buffer, "w", newline="") as f:
                return self.to_csv(f)
        writer = csv.writer(path_or_buffer)
        writer.writerow(self.columns)
        writer.writerows(self.rows)

    def _repr_markdown_(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(self._fmt(v) for v in r) + " |" for r in self.rows]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._fmt(v))}</td>" for v in r) + "</tr>"
                       for r in self.rows)
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f'<table class="nncompress-table">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def __str__(self) -> str:
        cells = [self.columns] + [[self._fmt(v) for v in r] for r in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)

    __repr__ = __str__


def comparison_table(profiles: Sequence[Profile], reference: int | None = 0) -> Table:
    """The book's comparison table: one row per profile.

    Sizes are shown in kB (1000 bytes), FLOPs in millions per input, latency in ms per batch.
    With ``reference`` (an index into ``profiles``), ratio columns give each model's compression
    in bytes and speed-up at each batch size relative to that row (>1 is better).
    """
    profiles = list(profiles)
    if not profiles or not all(isinstance(p, Profile) for p in profiles):
        raise TypeError("profiles must be a non-empty sequence of Profile")
    if reference is not None and not 0 <= reference < len(profiles):
        raise ValueError(f"reference must index profiles (0..{len(profiles) - 1}) or be None, got {reference!r}")
    batches = sorted({b for p in profiles for b in p.latency})
    columns = ["model", "error %", "params", "non-zeros", "kB", "MFLOPs"]
    columns += [f"ms @ b={b}" for b in batches]
    if reference is not None:
        columns += ["size ×"] + [f"speed-up @ b={b}" for b in batches]
    rows = []
    for p in profiles:
        row = [p.name, None if p.error is None else 100 * p.error, p.params, p.nonzeros, p.bytes / 1e3, p.flops / 1e6]
        row += [1e3 * p.latency[b] if b in p.latency else None for b in batches]
        if reference is not None:
            ref = profiles[reference]
            row.append(ref.bytes / p.bytes if p.bytes else None)
            row += [ref.latency[b] / p.latency[b] if b in p.latency and b in ref.latency else None for b in batches]
        rows.append(row)
    threads = sorted({p.threads for p in profiles})
    caption = f"latency: median of torch.utils.benchmark, {', '.join(map(str, threads))} thread(s)"
    return Table(columns, rows, caption)
