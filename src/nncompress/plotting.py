"""The book's plot style, applied by calling :func:`use_book_style`, and the Pareto plot.

Nothing here runs on import: matplotlib is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BOOK_STYLE", "PALETTE", "use_book_style", "pareto_front", "pareto_plot", "layer_share_plot"]

BOOK_STYLE = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "lines.markersize": 5,
}

# Okabe-Ito: distinguishable with the common forms of colour blindness.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def use_book_style() -> None:
    """Apply the book's matplotlib style (sizes, fonts, colour-blind-safe palette) globally."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(BOOK_STYLE)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=PALETTE)


def pareto_front(costs: Sequence[float], errors: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats in both cost and error (lower is better for both),
    sorted by increasing cost."""
    if len(costs) != len(errors):
        raise ValueError(f"costs and errors must have equal length, got {len(costs)} and {len(errors)}")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], errors[i]))
    front, best = [], float("inf")
    for i in order:
        if errors[i] < best:
            front.append(i)
            best = errors[i]
    return front


def pareto_plot(profiles, cost: str = "bytes", ax=None, logx: bool = True, annotate: bool = True):
    """Scatter test error (%) against a cost of each :class:`~nncompress.measure.Profile`, with the
    Pareto front drawn as a step line. ``cost`` is ``"bytes"``, ``"params"``, ``"nonzeros"``,
    ``"flops"`` or ``"latency@<batch>"``. Returns the axes."""
    import matplotlib.pyplot as plt

    profiles = [p for p in profiles if p.error is not None]
    if not profiles:
        raise ValueError("profiles must include at least one profile with an accuracy")
    if cost.startswith("latency@"):
        batch = int(cost.split("@", 1)[1])
        xs, label = [1e3 * p.latency[batch] for p in profiles], f"latency at batch {batch} (ms)"
    elif cost in ("bytes", "params", "nonzeros", "flops"):
        xs, label = [float(getattr(p, cost)) for p in profiles], {"bytes": "serialized size (bytes)",
                                                                    "params": "parameters", "nonzeros": "non-zeros",
                                                                    "flops": "FLOPs per input"}[cost]
    else:
        raise ValueError(f"cost must be bytes, params, nonzeros, flops or latency@<batch>, got {cost!r}")
    ys = [100 * p.error for p in profiles]
    ax = ax or plt.gca()
    front = pareto_front(xs, ys)
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="0.6", zorder=1, label="Pareto front")
    ax.scatter(xs, ys, zorder=2)
    if annotate:
        for x, y, p in zip(xs, ys, profiles):
            ax.annotate(p.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test error (%)")
    return ax


def layer_share_plot(breakdowns: dict, quantities: Sequence[str] = ("params", "bytes", "flops"), axes=None):
    """Stacked horizontal bars: each layer's share of each quantity, one bar per model.

    ``breakdowns`` maps a model name to the rows of :func:`nncompress.measure.layer_breakdown`.
    Returns the array of axes (one per quantity).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if not breakdowns:
        raise ValueError("breakdowns must name at least one model")
    names = list(breakdowns)
    if axes is None:
        _, axes = plt.subplots(1, len(quantities), figsize=(3.2 * len(quantities), 0.6 + 0.5 * len(names)),
                               sharey=True, squeeze=False)
        axes = axes[0]
    titles = {"params": "parameters", "bytes": "bytes", "flops": "FLOPs per input"}
    for ax, quantity in zip(axes, quantities):
        for row, name in enumerate(names):
            rows = breakdowns[name]
            total = sum(r[quantity] for r in rows) or 1
            left = 0.0
            for i, r in enumerate(rows):
                share = r[quantity] / total
                ax.barh(row, share, left=left, color=PALETTE[i % len(PALETTE)], edgecolor="white")
                if share > 0.12:
                    ax.text(left + share / 2, row, r["layer"], ha="center", va="center", fontsize=8, color="white")
                left += share
        ax.set_yticks(np.arange(len(names)), names)
        ax.set_xlim(0, 1)
        ax.set_xlabel(f"share of {titles.get(quantity, quantity)}")
        ax.grid(False)
    return axes
