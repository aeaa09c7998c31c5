"""What the harness reports: the :class:`Profile` record, tables, and results files.

:class:`Profile` holds everything :func:`nncompress.measure.profile` measured about one model;
:func:`comparison_table` lays profiles side by side as a :class:`Table` (HTML and Markdown in a
notebook, CSV on disk); :func:`write_results` writes them as JSON with their provenance
(:func:`environment`). Everything here is re-exported by :mod:`nncompress.measure`.

References: blalock2020state
"""

from __future__ import annotations

import csv
import html
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

__all__ = ["LOWER_IS_BETTER", "Profile", "Table", "comparison_table", "environment", "write_results"]


LOWER_IS_BETTER = frozenset({"loss", "perplexity"})  # metrics (Profile.metric) to minimize


@dataclass
class Profile:
    """Everything the harness measured about one model.

    Parameters
    ----------
    name
        The model's name in tables and plots.
    accuracy
        Top-1 accuracy in [0, 1] on the evaluation data, or None if none was given.
    params, nonzeros, bytes, flops
        Counts as defined in :mod:`nncompress.measure` (FLOPs for one input).
    latency
        Seconds per forward pass, by batch size.
    threads
        The thread count the latencies were measured with.
    bytes_source
        ``"state_dict"`` (``torch.save`` of the state) or ``"custom"`` (a given encoding).
    metric, score
        A quality measure other than accuracy, by name, and its value (e.g. ``"spearman"``:
        STS-B's Spearman correlation times 100, higher is better), or None.

    References
    ----------
    blalock2020state
    """

    name: str
    accuracy: float | None
    params: int
    nonzeros: int
    bytes: int
    flops: int
    latency: dict[int, float] = field(default_factory=dict)
    threads: int = 1
    bytes_source: str = "state_dict"
    metric: str | None = None
    score: float | None = None

    @property
    def error(self) -> float | None:
        """Top-1 error in [0, 1] (``1 - accuracy``), or None without an accuracy."""
        return None if self.accuracy is None else 1.0 - self.accuracy

    @property
    def shortfall(self) -> float | None:
        """What a Pareto front minimizes: the error with an accuracy, else minus the score (the score
        itself for a metric where lower is better, :data:`LOWER_IS_BETTER`), else None."""
        if self.accuracy is not None:
            return self.error
        if self.score is None:
            return None
        return self.score if self.metric in LOWER_IS_BETTER else -self.score

    def as_dict(self) -> dict:
        """A flat dictionary (latency keys become ``latency_b<batch>_s``) for CSV or JSON."""
        row = {k: v for k, v in asdict(self).items() if k != "latency"}
        row.update({f"latency_b{b}_s": t for b, t in sorted(self.latency.items())})
        return row


def _check_profiles(profiles) -> list[Profile]:
    """``profiles`` as a non-empty list of :class:`Profile`."""
    profiles = list(profiles)
    if not profiles or not all(isinstance(p, Profile) for p in profiles):
        raise TypeError("profiles must be a non-empty sequence of Profile")
    return profiles


def environment() -> dict:
    """Provenance of a measurement: CPU, thread count, torch and Python versions.

    Returns
    -------
    dict
        ``{"cpu", "threads", "torch", "python", "int8_engine", "vnni"}``. The CPU is the model
        name of ``/proc/cpuinfo`` where it exists, else the platform's processor or machine
        name; ``int8_engine`` is torch's quantized engine (``"x86"``, ``"fbgemm"``,
        ``"qnnpack"``...); ``vnni`` says whether the CPU has x86's 8-bit dot-product
        instructions (AVX-512 VNNI or AVX-VNNI), without which int8 kernels gain little over
        float32 when the arithmetic, not memory, sets the pace.

    References
    ----------
    hoefler2015scientific
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read().splitlines()
    except OSError:
        info = []
    fields = [line.split(":", 1) for line in info if ":" in line]
    cpu = next((value.strip() for key, value in fields if key.strip() == "model name"), cpu)
    flags = set(next((value.split() for key, value in fields if key.strip() == "flags"), []))
    return {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "int8_engine": torch.backends.quantized.engine,
            "vnni": bool(flags & {"avx512_vnni", "avx_vnni"})}


def write_results(profiles: Sequence[Profile], path, **metadata) -> dict:
    """Write ``profiles`` as JSON to ``path`` with their provenance; return what was written.

    Parameters
    ----------
    profiles
        A non-empty sequence of :class:`Profile`.
    path
        The file to write (a path or a string).
    **metadata
        JSON-able values stored beside the results (e.g. the dataset or the notebook).

    Returns
    -------
    dict
        ``{"environment": environment(), **metadata, "results": [p.as_dict() for p in profiles]}``.

    Raises
    ------
    TypeError
        If ``profiles`` is empty or holds something other than a :class:`Profile`.

    References
    ----------
    hoefler2015scientific
    """
    profiles = _check_profiles(profiles)
    document = {"environment": environment(), **metadata, "results": [p.as_dict() for p in profiles]}
    with open(path, "w") as f:
        json.dump(document, f, indent=1)
    return document


class Table:
    """A small table that renders as HTML and Markdown in notebooks and writes CSV.

    Parameters
    ----------
    columns
        Column names.
    rows
        Rows of values, one per column; floats and ints are formatted for display only.
    caption
        A caption shown above the HTML table.

    Raises
    ------
    ValueError
        If a row does not have one value per column.

    References
    ----------
    blalock2020state
    """

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
        """A value as displayed: three significant digits, thousands separators, a dash for None."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "–"
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    def records(self) -> list[dict]:
        """The rows as dicts from column name to raw value."""
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

    Parameters
    ----------
    profiles
        A non-empty sequence of :class:`Profile`.
    reference
        An index into ``profiles``: ratio columns then give each model's compression in bytes
        and speed-up at each batch size relative to that row (> 1 is better). None: no ratios.

    Returns
    -------
    Table
        Columns ``model``, ``error %`` (or the profiles' ``metric``, when they all have a score
        by the same one), ``params``, ``non-zeros``, ``kB``, ``MFLOPs``,
        ``ms @ b=<batch>`` per batch size, then ``size ×`` and ``speed-up @ b=<batch>``.

    Raises
    ------
    TypeError
        If ``profiles`` is empty or holds something other than a :class:`Profile`.
    ValueError
        If ``reference`` is not an index into ``profiles`` or None.

    References
    ----------
    blalock2020state
    """
    profiles = _check_profiles(profiles)
    if reference is not None and not 0 <= reference < len(profiles):
        raise ValueError(f"reference must index profiles (0..{len(profiles) - 1}) or be None, got {reference!r}")
    batches = sorted({b for p in profiles for b in p.latency})
    scored = all(p.score is not None for p in profiles) and len({p.metric for p in profiles}) == 1
    columns = ["model", profiles[0].metric if scored else "error %", "params", "non-zeros", "kB", "MFLOPs"]
    columns += [f"ms @ b={b}" for b in batches]
    if reference is not None:
        columns += ["size ×"] + [f"speed-up @ b={b}" for b in batches]
    rows = []
    for p in profiles:
        quality = p.score if scored else None if p.error is None else 100 * p.error
        row = [p.name, quality, p.params, p.nonzeros, p.bytes / 1e3, p.flops / 1e6]
        row += [1e3 * p.latency[b] if b in p.latency else None for b in batches]
        if reference is not None:
            ref = profiles[reference]
            row.append(ref.bytes / p.bytes if p.bytes else None)
            row += [ref.latency[b] / p.latency[b] if b in p.latency and b in ref.latency else None for b in batches]
        rows.append(row)
    threads = sorted({p.threads for p in profiles})
    caption = (f"latency: median of torch.utils.benchmark, models timed in turns, "
               f"{', '.join(map(str, threads))} thread(s)")
    return Table(columns, rows, caption)
