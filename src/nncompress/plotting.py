"""The book's plot style, applied by calling :func:`use_book_style`, and the Pareto plot.

Nothing here runs on import: matplotlib is imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["BOOK_STYLE", "PALETTE", "use_book_style", "pareto_plot", "layer_share_plot"]

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
    """Apply the book's matplotlib style (sizes, fonts, colour-blind-safe palette) globally.

    Importing the package changes no style; a notebook calls this once, after its imports.

    Returns
    -------
    None
        ``matplotlib.rcParams`` is updated with :data:`BOOK_STYLE` and the :data:`PALETTE` cycle.

    References
    ----------
    None: a house style (the palette is Okabe and Ito's colour-blind-safe one).
    """
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(BOOK_STYLE)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=PALETTE)


_LABELS = {"bytes": "serialized size (bytes)", "params": "parameters", "nonzeros": "non-zeros",
           "flops": "FLOPs per input"}


def pareto_plot(profiles, cost: str = "bytes", ax=None, logx: bool = True, annotate: bool = True):
    """Scatter test error (%), or the score, against a cost of each profile, with the Pareto front.

    The front is :func:`nncompress.measure.pareto_front`'s (the one definition in the package).

    Parameters
    ----------
    profiles
        :class:`~nncompress.measure.Profile` s; those without an accuracy are left out, unless
        none has one: then those with a score are drawn (the score on the y axis, named by the
        profiles' ``metric``).
    cost
        ``"bytes"``, ``"params"``, ``"nonzeros"``, ``"flops"`` or ``"latency_b<batch>"`` (a
        measured batch size), as the ``axis`` of :func:`~nncompress.measure.pareto_front`;
        latency is drawn in milliseconds.
    ax
        The matplotlib axes to draw on (the current axes when None).
    logx
        Use a logarithmic cost axis.
    annotate
        Write each profile's name beside its point.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.

    Raises
    ------
    ValueError
        If no profile has an accuracy or a score, or ``cost`` is not one of the above.

    References
    ----------
    blalock2020state
    """
    import matplotlib.pyplot as plt

    from .measure import _cost, pareto_front

    profiles = list(profiles)
    scored = not any(p.accuracy is not None for p in profiles)
    profiles = [p for p in profiles if (p.score if scored else p.accuracy) is not None]
    if not profiles:
        raise ValueError("profiles must include at least one profile with an accuracy or a score")
    front = pareto_front(profiles, cost)  # validates cost
    scale, label = 1.0, _LABELS.get(cost)
    if label is None:
        scale, label = 1e3, f"latency at batch {cost.removeprefix('latency_b')} (ms)"
    def quality(p):
        return p.score if scored else 100 * p.error

    xs, ys = [scale * _cost(p, cost) for p in profiles], [quality(p) for p in profiles]
    ax = ax or plt.gca()
    ax.step([scale * _cost(p, cost) for p in front], [quality(p) for p in front], where="post", color="0.6",
            zorder=1, label="Pareto front")
    ax.scatter(xs, ys, zorder=2)
    if annotate:
        for x, y, p in zip(xs, ys, profiles):
            ax.annotate(p.name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel(profiles[0].metric or "score" if scored else "test error (%)")
    return ax


def layer_share_plot(breakdowns: dict, quantities: Sequence[str] = ("params", "bytes", "flops"), axes=None):
    """Stacked horizontal bars: each layer's share of each quantity, one bar per model.

    Parameters
    ----------
    breakdowns
        Model names mapped to the rows of :func:`nncompress.measure.layer_breakdown`.
    quantities
        Keys of those rows to draw, one panel each.
    axes
        One matplotlib axes per quantity, or None for a new figure.

    Returns
    -------
    sequence of matplotlib.axes.Axes
        The axes, one per quantity.

    Raises
    ------
    ValueError
        If ``breakdowns`` is empty.

    References
    ----------
    han2015learning
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
