"""Pruning procedures built on :func:`nncompress.train.fit`, and experiments that compare them.

- :func:`iterative_prune_`: Han et al.'s prune-and-retrain loop;
- :func:`gradual_pruning`: Zhu and Gupta's schedule, as a step callback for ``fit``;
- :func:`lottery_ticket`: Frankle and Carbin's search, with the rewinding of Frankle et al.;
- :func:`sparsity_sweep` and :func:`gradual_vs_one_shot`: experiments returning plain numbers.

References: han2015learning, zhu2017prune, frankle2019lottery, frankle2019stabilizing
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .. import layers as L
from .. import validate
from ..measure import count_nonzeros, count_params
from ..train import Recipe, fit
from .criteria import polynomial_sparsity
from .masks import plain_state, prune_magnitude, prune_magnitude_, rewind_

__all__ = ["iterative_prune_", "gradual_pruning", "sparsity_sweep", "gradual_vs_one_shot", "lottery_ticket"]


def _check_training(x, y, recipe, seed) -> None:
    """Validate the training arguments shared by the procedures."""
    validate.tensor(x, "x")
    validate.tensor(y, "y", dim=1)
    if len(x) != len(y):
        raise ValueError(f"x and y must hold the same number of examples, got {len(x)} and {len(y)}")
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be an nncompress.train.Recipe, got {type(recipe).__name__}")
    validate.integer(seed, "seed")


def _frozen(layers: L.Layers) -> L.Layers:
    """``layers`` with an iterator turned into a list, since it is used once per pruning step."""
    return list(layers) if isinstance(layers, Iterator) else layers


def _check_callable(value, name: str) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be a callable, got {type(value).__name__}")


def iterative_prune_(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     schedule: Sequence[float | Mapping], recipe: Recipe, seed: int = 0, scope: str = "layer",
                     layers: L.Layers = None, on_round: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
    """Han et al.'s prune-and-retrain loop, in place (it trains ``model``).

    For each entry of ``schedule``, prune ``model`` by magnitude (:func:`prune_magnitude_`), then
    retrain the surviving weights on ``(x, y)`` with ``recipe`` (round ``i`` with seed ``seed + i``).

    Parameters
    ----------
    model
        A trained model (masks already attached are kept and only ever extended).
    x, y
        Training inputs and labels.
    schedule
        The sparsity of each round: a number, or a per-layer mapping (see :func:`prune_magnitude_`).
    recipe
        The retraining recipe.
    seed
        Seeds the retraining.
    scope, layers
        As :func:`prune_magnitude_`.
    on_round
        Called as ``on_round(i, model)`` after round ``i``.

    Returns
    -------
    nn.Module
        ``model``, pruned and retrained, masks attached.

    Raises
    ------
    TypeError
        For arguments of the wrong kind (``schedule`` not a list, ``recipe`` not a Recipe,
        ``on_round`` not callable, ...).
    ValueError
        For an empty ``schedule``, or as :func:`prune_magnitude_` for a bad sparsity, scope or layer.

    References
    ----------
    han2015learning
    """
    validate.module(model)
    _check_training(x, y, recipe, seed)
    if isinstance(schedule, (str, Mapping)) or not isinstance(schedule, Sequence):
        raise TypeError(f"schedule must be a list of sparsities, got {type(schedule).__name__}")
    if not schedule:
        raise ValueError("schedule must be a non-empty list of sparsities")
    layers = _frozen(layers)
    if on_round is not None:
        _check_callable(on_round, "on_round")
    for i, sparsity in enumerate(schedule):
        prune_magnitude_(model, sparsity, layers=layers, scope=scope)
        fit(model, x, y, recipe, seed=seed + i)
        if on_round is not None:
            on_round(i, model)
    return model


def gradual_pruning(final_sparsity: float, begin_step: int, end_step: int, frequency: int = 100,
                    initial_sparsity: float = 0.0, layers: L.Layers = None,
                    scope: str = "layer") -> Callable[[int, nn.Module], None]:
    """A step callback for :func:`nncompress.train.fit` that prunes by magnitude during training.

    Every ``frequency`` steps from ``begin_step`` to ``end_step`` (and at ``end_step``), the
    callback prunes the model in place (:func:`prune_magnitude_`) to the sparsity
    :func:`polynomial_sparsity` gives for that step.

    Parameters
    ----------
    final_sparsity, begin_step, end_step, initial_sparsity
        As :func:`polynomial_sparsity`.
    frequency
        Steps between two prunings, an int >= 1.
    layers, scope
        As :func:`prune_magnitude_`.

    Returns
    -------
    callable
        ``callback(step, model)``, for ``fit(..., on_step_end=callback)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`polynomial_sparsity`; for a ``frequency`` that is not an int >= 1, or an unknown ``scope``.

    References
    ----------
    zhu2017prune
    """
    polynomial_sparsity(begin_step, final_sparsity, begin_step, end_step, initial_sparsity)  # validates
    validate.integer(frequency, "frequency", 1)
    validate.choice(scope, "scope", ("layer", "global"))
    layers = _frozen(layers)

    def callback(step: int, model: nn.Module) -> None:
        due = (step - begin_step) % frequency == 0 or step == end_step
        if begin_step <= step <= end_step and due:
            s = polynomial_sparsity(step, final_sparsity, begin_step, end_step, initial_sparsity)
            prune_magnitude_(model, s, layers=layers, scope=scope)

    return callback


@contextlib.contextmanager
def _dropout_rates(model: nn.Module, rates: Mapping[str, float]):
    """Set the named ``nn.Dropout`` modules of ``model`` to the given rates, restoring them on exit."""
    modules = {name: model.get_submodule(name) for name in rates}
    saved = {name: m.p for name, m in modules.items()}
    try:
        for name, m in modules.items():
            m.p = rates[name]
        yield model
    finally:
        for name, m in modules.items():
            m.p = saved[name]


def _check_dropout(model: nn.Module, rates) -> dict[str, float]:
    """``rates`` as a dict, after checking that it maps Dropout modules of ``model`` to rates in [0, 1)."""
    if rates is None:
        return {}
    validate.mapping(rates, "dropout")
    modules = dict(model.named_modules())
    for name, p in rates.items():
        if not isinstance(modules.get(name), nn.Dropout):
            found = [n for n, m in modules.items() if isinstance(m, nn.Dropout)]
            raise ValueError(f"dropout names {name!r}, which is not an nn.Dropout module of the model "
                             f"(those are {found})")
        validate.fraction(p, f"dropout[{name!r}]")
    return dict(rates)


def _check_sparsities(sparsities) -> list[float]:
    """``sparsities`` as a list, after checking it is a non-empty, increasing sequence in [0, 1)."""
    if isinstance(sparsities, str) or not isinstance(sparsities, Sequence):
        raise TypeError(f"sparsities must be a sequence of numbers, got {type(sparsities).__name__}")
    values = [validate.fraction(s, f"sparsities[{i}]") for i, s in enumerate(sparsities)]
    if not values or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"sparsities must be a non-empty, strictly increasing sequence, got {values}")
    return values


def sparsity_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sparsities: Sequence[float],
                   recipe: Recipe, score: Callable[[nn.Module], float], seed: int = 0, scope: str = "layer",
                   layers: L.Layers = None, dropout: Mapping[str, float] | None = None) -> dict[str, list[float]]:
    """Score one-shot and iterative magnitude pruning of a trained ``model`` at each of ``sparsities``.

    Three procedures, each pruning with :func:`prune_magnitude` (``scope``, ``layers``):

    - ``"one-shot"``: ``model`` pruned to ``s``, not retrained;
    - ``"one-shot + retrain"``: that model, then retrained on ``(x, y)`` with ``recipe`` and ``seed``;
    - ``"iterative"``: one model carried through the whole sweep, pruned to each ``s`` in turn and
      retrained after each cut, with ``recipe`` and ``seed`` (:func:`iterative_prune_`, one round
      per sparsity), as in Han et al.'s prune-and-retrain loop.

    Parameters
    ----------
    model
        A trained model; it is left unchanged.
    x, y
        Training inputs and labels for the retraining.
    sparsities
        Strictly increasing fractions in [0, 1).
    recipe, seed
        The retraining recipe and its seed.
    score
        ``score(model) -> float``, e.g. a test error.
    scope, layers
        As :func:`prune_magnitude`.
    dropout
        ``{name of an nn.Dropout module: rate}`` used while retraining; the rates are restored afterwards.

    Returns
    -------
    dict
        ``{procedure: [score of the pruned model for s in sparsities]}``, three lists.

    Raises
    ------
    TypeError
        For arguments of the wrong kind, among them a non-numeric sparsity or ``dropout`` rate.
    ValueError
        For empty or non-increasing ``sparsities``, a value outside [0, 1), a ``dropout`` key that is
        not an ``nn.Dropout`` module, or a bad ``scope`` or layer, as :func:`prune_magnitude`.

    References
    ----------
    han2015learning
    """
    validate.module(model)
    _check_training(x, y, recipe, seed)
    sparsities = _check_sparsities(sparsities)
    _check_callable(score, "score")
    dropout = _check_dropout(model, dropout)
    validate.choice(scope, "scope", ("layer", "global"))
    layers = _frozen(layers)
    curves: dict[str, list[float]] = {"one-shot": [], "one-shot + retrain": [], "iterative": []}
    chain = copy.deepcopy(model)  # carried through the sweep, pruned and retrained in place
    for s in sparsities:
        once = prune_magnitude(model, s, layers=layers, scope=scope)
        curves["one-shot"].append(score(once))
        with _dropout_rates(once, dropout):
            fit(once, x, y, recipe, seed=seed)
        curves["one-shot + retrain"].append(score(once))
        with _dropout_rates(chain, dropout):
            iterative_prune_(chain, x, y, [s], recipe, seed=seed, scope=scope, layers=layers)
        curves["iterative"].append(score(chain))
    return curves


def _check_steps(x, recipe: Recipe, end_step, trace_every) -> None:
    """``end_step`` within the recipe's training steps, ``trace_every`` an int >= 0."""
    total_steps = recipe.epochs * -(-len(x) // recipe.batch_size)
    validate.integer(end_step, "end_step", 1, total_steps)
    validate.integer(trace_every, "trace_every", 0)


def gradual_vs_one_shot(model: nn.Module, x: torch.Tensor, y: torch.Tensor, final_sparsity: float,
                        recipe: Recipe, score: Callable[[nn.Module], float], end_step: int,
                        begin_step: int = 0, frequency: int = 100, seed: int = 0, scope: str = "layer",
                        layers: L.Layers = None, trace_every: int = 0) -> dict:
    """Score gradual against one-shot magnitude pruning of a trained ``model``, with equal budgets.

    Both procedures train a copy of ``model`` on ``(x, y)`` with ``recipe`` and ``seed``:

    - ``"gradual"``: pruned during training by :func:`gradual_pruning` from step ``begin_step`` to
      ``end_step`` (steps count from 1), every ``frequency`` steps, on Zhu and Gupta's cubic
      schedule to ``final_sparsity``, and fine-tuned for the remaining steps;
    - ``"one-shot"``: pruned to ``final_sparsity`` by :func:`prune_magnitude` before training,
      then fine-tuned for the whole budget.

    Parameters
    ----------
    model
        A trained model; it is left unchanged.
    x, y, recipe, seed
        The training data, recipe and seed of both procedures.
    final_sparsity, begin_step, end_step, frequency
        As :func:`gradual_pruning`; ``end_step`` at most the recipe's
        ``epochs * ceil(len(x) / batch_size)`` steps.
    score
        ``score(model) -> float``, e.g. a test error.
    scope, layers
        As :func:`prune_magnitude`.
    trace_every
        Record the gradual model's sparsity every this many steps (0: no trace).

    Returns
    -------
    dict
        ``{"gradual": score, "one-shot": score, "trace": [(step, sparsity), ...]}``; ``trace`` holds
        the sparsity over *all* parameters, biases included (``1 - count_nonzeros / count_params``).

    Raises
    ------
    TypeError
        For arguments of the wrong kind (steps that are not ints, ``score`` not callable, ...).
    ValueError
        For ``final_sparsity`` outside [0, 1), ``begin_step < end_step`` failing, ``end_step``
        beyond the recipe's steps, ``frequency < 1``, ``trace_every < 0``, or a bad scope or layer.

    References
    ----------
    zhu2017prune
    """
    validate.module(model)
    _check_training(x, y, recipe, seed)
    _check_steps(x, recipe, end_step, trace_every)
    _check_callable(score, "score")
    layers = _frozen(layers)
    schedule = gradual_pruning(final_sparsity, begin_step, end_step, frequency, layers=layers, scope=scope)
    oneshot = prune_magnitude(model, final_sparsity, layers=layers, scope=scope)
    trace: list[tuple[int, float]] = []

    def step(s: int, m: nn.Module) -> None:
        schedule(s, m)
        if trace_every and s % trace_every == 0:
            trace.append((s, 1 - count_nonzeros(m) / count_params(m)))

    gradual = copy.deepcopy(model)  # trained in place
    fit(gradual, x, y, recipe, seed=seed, on_step_end=step)
    fit(oneshot, x, y, recipe, seed=seed)
    return {"gradual": score(gradual), "one-shot": score(oneshot), "trace": trace}


def lottery_ticket(make_model: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
                   sparsity: float, rounds: int = 1, rewind_step: int = 0, seed: int = 0,
                   layers: L.Layers = None, scope: str = "layer") -> nn.Module:
    """Find a lottery ticket by iterative magnitude pruning with rewinding.

    Initialize a model with ``seed``; train it with ``recipe``; prune so that after round ``r``
    the sparsity is ``1 - (1 - sparsity) ** (r / rounds)``; rewind the surviving weights to their
    values at step ``rewind_step`` (0: the initialization, as Frankle and Carbin; a small positive
    step: the rewinding of Frankle et al.), and repeat.

    Parameters
    ----------
    make_model
        ``make_model() -> nn.Module``, a freshly initialized model.
    x, y, recipe
        Training data and recipe of each round (round ``r`` is seeded ``seed + r``).
    sparsity
        The final sparsity, in [0, 1).
    rounds
        Rounds of train, prune, rewind; an int >= 1.
    rewind_step
        The training step of the first round whose weights the ticket is rewound to; an int >= 0.
    seed
        Seeds the initialization and the training.
    layers, scope
        As :func:`prune_magnitude_`.

    Returns
    -------
    nn.Module
        The masked, rewound, *untrained* ticket; train it with :func:`nncompress.train.fit`.

    Raises
    ------
    TypeError
        For arguments of the wrong kind.
    ValueError
        For ``sparsity`` outside [0, 1), ``rounds < 1``, ``rewind_step < 0`` or beyond the first
        round's steps, or a bad scope or layer.

    References
    ----------
    frankle2019lottery, frankle2019stabilizing
    """
    _check_callable(make_model, "make_model")
    _check_training(x, y, recipe, seed)
    sparsity = validate.fraction(sparsity, "sparsity")
    rounds = validate.integer(rounds, "rounds", 1)
    rewind_step = validate.integer(rewind_step, "rewind_step", 0)
    layers = _frozen(layers)
    torch.manual_seed(seed)
    model = make_model()
    saved = {"state": copy.deepcopy(model.state_dict())} if rewind_step == 0 else {}

    def capture(step: int, m: nn.Module) -> None:
        if step == rewind_step and "state" not in saved:
            saved["state"] = {k: v.detach().clone() for k, v in plain_state(m).items()}

    for r in range(1, rounds + 1):
        fit(model, x, y, recipe, seed=seed + r, on_step_end=capture if r == 1 and rewind_step else None)
        if "state" not in saved:
            raise ValueError(f"rewind_step {rewind_step} is beyond the first round's training steps")
        prune_magnitude_(model, 1.0 - (1.0 - sparsity) ** (r / rounds), layers=layers, scope=scope)
        rewind_(model, saved["state"])
    return model
