"""nncompress.budget: the rank for a parameter budget (the budget holds at the rank and fails one
above it) and Chen et al.'s equal-budget MLPs (each fits its budget and uses most of it)."""

from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nncompress import parametrizations
from nncompress.budget import BUDGET_METHODS, budget_mlp, rank_for_budget
from nncompress.pruning import Mask
from nncompress.sharing import HashedLinear

# --------------------------------------------------------------------------- rank_for_budget

SHAPE = st.tuples(st.integers(1, 3000), st.integers(1, 3000))


def fits(rank, shapes, fraction):
    """The budget in exact rational arithmetic, ``fraction`` read as the decimal it prints as:
    ``rank * sum(m + n) <= fraction * sum(m * n)``."""
    return rank * sum(m + n for m, n in shapes) <= Fraction(repr(fraction)) * sum(m * n for m, n in shapes)


@settings(derandomize=True, database=None, deadline=None, max_examples=200)
@given(shapes=st.lists(SHAPE, min_size=1, max_size=4),
       fraction=st.floats(1e-4, 1.0, exclude_min=False) | st.sampled_from([1 / 8, 1 / 64, 0.5, 0.1, 0.25, 1.0]))
def test_the_budget_holds_at_the_rank_and_fails_one_above(shapes, fraction):
    rank = rank_for_budget(shapes, fraction)
    assert isinstance(rank, int) and rank >= 1
    assert fits(rank, shapes, fraction) or rank == 1
    assert not fits(rank + 1, shapes, fraction)


@settings(derandomize=True, database=None, deadline=None, max_examples=50)
@given(shape=SHAPE, fraction=st.floats(1e-3, 1.0))
def test_one_pair_is_the_same_as_a_list_of_one(shape, fraction):
    assert rank_for_budget(shape, fraction) == rank_for_budget([shape], fraction)


def test_known_ranks():
    assert rank_for_budget([(1000, 784), (10, 1000)], 1 / 64) == 4  # 12,406.25 // 2,794
    assert rank_for_budget([(1000, 784), (10, 1000)], 1 / 8) == 35
    assert rank_for_budget((100, 100), 1.0) == 50  # 50 * 200 == 10,000: the budget is inclusive
    assert rank_for_budget((100, 100), 0.5) == 25
    assert rank_for_budget((100, 100), 0.7) == 35  # 0.7 is 7/10, though the float 0.7 is just below it
    assert rank_for_budget((100, 100), 0.3) == 15  # the float 0.3 is just below 3/10 too
    assert rank_for_budget((100, 100), 0.7 - 1e-12) == 34
    assert rank_for_budget((3, 3), 0.1) == 1  # rank 1 (6 numbers) exceeds 0.9: still 1


@pytest.mark.parametrize("shapes, fraction, error, match", [
    ((100, 100), 0.0, ValueError, r"fraction must be a finite number in \(0.0, 1.0\]"),
    ((100, 100), 1.5, ValueError, "fraction"),
    ((100, 100), float("nan"), ValueError, "fraction"),
    ((100, 100), "half", TypeError, "fraction"),
    ([], 0.5, ValueError, "shapes must not be empty"),
    ((0, 5), 0.5, ValueError, r"shapes\[0\]\[0\]"),
    ([(4, 5), (3, -1)], 0.5, ValueError, r"shapes\[1\]\[1\]"),
    ([(4, 5), (3,)], 0.5, TypeError, r"shapes\[1\]"),
    ([(4, 5.0)], 0.5, TypeError, r"shapes\[0\]\[1\]"),
    (100, 0.5, TypeError, "shapes"),
    ("ab", 0.5, TypeError, "shapes"),
])
def test_rank_for_budget_rejects_bad_arguments(shapes, fraction, error, match):
    with pytest.raises(error, match=match):
        rank_for_budget(shapes, fraction)


# --------------------------------------------------------------------------- equal-budget MLPs

WEIGHTS = 784 * 1000 + 1000 * 10  # weights (not biases) of the dense 784-1000-10 network


def weights_of(model):
    """Trainable numbers outside biases: a hashed layer's buckets, both low-rank factors, the
    surviving (unmasked) entries of a randomly pruned layer."""
    plain = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("bias") and ".parametrizations." not in n)
    masked = parametrizations.find(model, Mask)
    return plain + sum(int(torch.count_nonzero(model.get_submodule(key.removesuffix(".weight")).weight)) for key in masked)


@pytest.mark.parametrize("factor", [1 / 8, 1 / 64])
@pytest.mark.parametrize("method", ["hashed", "lowrank", "random_edges", "small"])
def test_budget_mlps_fit_the_budget_and_use_most_of_it(method, factor):
    model = budget_mlp(method, factor)
    used = weights_of(model)
    assert 0.85 * factor * WEIGHTS <= used <= factor * WEIGHTS + 1, used
    assert model(torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))).shape == (3, 10)


def test_budget_mlp_parts_are_what_they_claim():
    hashed = budget_mlp("hashed", 1 / 8)
    assert isinstance(hashed.fc1, HashedLinear) and hashed.fc1.buckets == 98_000 and hashed.fc2.buckets == 1_250
    assert sum(p.numel() for p in hashed.parameters()) == 98_000 + 1_250 + 1_010  # buckets + biases
    low = budget_mlp("lowrank", 1 / 64)
    assert (low.fc1.rank, low.fc2.rank) == (4, 4) == (rank_for_budget([(1000, 784), (10, 1000)], 1 / 64),) * 2
    assert budget_mlp("lowrank", 1 / 8).fc1.rank == 35
    random = budget_mlp("random_edges", 1 / 8)
    assert int(random.fc1.weight.count_nonzero()) == 98_000
    assert sorted(parametrizations.find(random, Mask)) == ["fc1.weight", "fc2.weight"]
    assert budget_mlp("small", 1 / 64).hidden == (15,)
    assert sum(p.numel() for p in budget_mlp("dense").parameters()) == WEIGHTS + 1_010


def test_budget_mlp_is_deterministic_for_a_seed_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    for method in BUDGET_METHODS:
        a, b = budget_mlp(method, 1 / 8, seed=3), budget_mlp(method, 1 / 8, seed=3)
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), (method, name)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(budget_mlp("hashed", 1 / 8, seed=3).fc1.index, budget_mlp("hashed", 1 / 8, seed=4).fc1.index)
    assert not torch.equal(budget_mlp("dense", seed=3).fc1.weight, budget_mlp("dense", seed=4).fc1.weight)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(method="pruned"), ValueError, "method must be one of"),
    (dict(method="hashed", factor=0), ValueError, r"factor must be a finite number in \(0.0, 1.0\]"),
    (dict(method="hashed", factor=1.5), ValueError, r"factor must be a finite number in \(0.0, 1.0\]"),
    (dict(method="hashed", factor="1/8"), TypeError, "factor must be a number"),
    (dict(method="hashed", hidden=0), ValueError, "hidden must be an int >= 1"),
    (dict(method="hashed", hidden=10.0), TypeError, "hidden must be an int"),
    (dict(method="hashed", seed=-1), ValueError, "seed must be an int"),
])
def test_budget_mlp_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        budget_mlp(**kwargs)
