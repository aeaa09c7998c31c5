"""Package-level promises: importing has no side effects; plotting is opt-in."""

import json
import subprocess
import sys

import pytest

from nncompress import plotting

PROBE = r"""
import json, random, warnings
import numpy as np, torch, matplotlib as mpl
before = (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist(),
          dict(mpl.rcParams), list(warnings.filters), torch.get_num_threads(),
          torch.are_deterministic_algorithms_enabled())
import nncompress
after = (random.getstate(), np.random.get_state()[1].tolist(), torch.get_rng_state().tolist(),
         dict(mpl.rcParams), list(warnings.filters), torch.get_num_threads(),
         torch.are_deterministic_algorithms_enabled())
print(json.dumps([repr(a) == repr(b) for a, b in zip(before, after)]))
"""


def test_import_has_no_side_effects():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [True] * 7


def test_book_style_is_applied_only_when_called():
    mpl = pytest.importorskip("matplotlib")
    with mpl.rc_context():
        mpl.rcdefaults()
        assert mpl.rcParams["axes.spines.top"] is True
        plotting.use_book_style()
        assert mpl.rcParams["axes.spines.top"] is False
        assert mpl.rcParams["axes.prop_cycle"].by_key()["color"] == list(plotting.PALETTE)


def test_pareto_front_matches_brute_force():
    import random

    from nncompress.measure import Profile, pareto_front

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)  # few distinct values: many exact ties in cost, in error, or both
        points = [(rng.choice([1, 2, 3, 4, 5]), rng.choice([1, 2, 3, 4, 5])) for _ in range(n)]
        profiles = [Profile(f"p{i}", 1 - e / 100, 1, 1, c, 1) for i, (c, e) in enumerate(points)]
        # i is on the front iff no j is at least as good in both and strictly better in one;
        # exact ties (same cost and error) do not dominate each other, so all of them are kept
        expected = {f"p{i}" for i, (c, e) in enumerate(points)
                    if not any(c2 <= c and e2 <= e and (c2, e2) != (c, e) for c2, e2 in points)}
        front = pareto_front(profiles, "bytes")
        assert {p.name for p in front} == expected
        assert [p.bytes for p in front] == sorted(p.bytes for p in front)  # cheapest first
        assert [p.error for p in front] == sorted((p.error for p in front), reverse=True)  # then most accurate


def test_pareto_plot_draws_points_and_front():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nncompress.measure import Profile

    profiles = [Profile("a", 0.99, 10, 10, 100, 1, {1: 1e-3}), Profile("b", 0.98, 5, 5, 50, 1, {1: 2e-3}),
                Profile("c", 0.97, 8, 8, 80, 1, {1: 3e-3})]
    fig, ax = plt.subplots()
    plotting.pareto_plot(profiles, cost="bytes", ax=ax)
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [50.0, 100.0]  # c is dominated by b
    ax.clear()
    plotting.pareto_plot(profiles, cost="latency_b1", ax=ax)
    assert list(ax.get_lines()[0].get_xdata()) == [1.0]  # a is fastest and most accurate: it dominates
    with pytest.raises(ValueError, match="axis"):
        plotting.pareto_plot(profiles, cost="energy", ax=ax)
    ax.clear()
    scored = [Profile(n, None, 1, 1, b, 1, metric="spearman", score=s) for n, s, b in (("f", 82, 90), ("q", 81, 20), ("w", 79, 50))]
    plotting.pareto_plot(scored, cost="bytes", ax=ax)
    assert list(ax.get_lines()[0].get_xdata()) == [20.0, 90.0] and ax.get_ylabel() == "spearman"
    assert sorted(ax.collections[0].get_offsets()[:, 1].tolist()) == [79, 81, 82]  # the scores themselves on the y axis
    plt.close(fig)
