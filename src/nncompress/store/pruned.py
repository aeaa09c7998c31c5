"""Pruned checkpoints: :data:`PRUNED` (:class:`PruneRecipe`), :func:`make_pruned`, :func:`pruned_info`,
:func:`pruned_baseline`.

The shipped ones are produced by ``python -m nncompress.baselines --pruned han lenet300_100 lenet5`` and
``python -m nncompress.baselines --pruned deep lenet5``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from torch import nn

from .. import parametrizations, pruning, validate
from ..data import MNIST, load_mnist
from ..train import Recipe
from .baselines import baseline
from .core import checkpoint_filename, checkpoint_record, load_model, lookup, stored

__all__ = ["PruneRecipe", "PRUNED", "make_pruned", "pruned_filename", "pruned_info", "pruned_baseline"]


@dataclass(frozen=True)
class PruneRecipe:
    """How a pruned checkpoint of the store is made from a trained baseline (see :func:`pruned_info`).

    :func:`nncompress.pruning.iterative_prune_` takes each layer to ``sparsity[layer]`` in rounds,
    at the given ``fractions`` of it, retraining with ``retrain`` after each round.

    Parameters
    ----------
    sparsity
        ``{layer name, glob pattern or type: final sparsity in [0, 1)}``; at least one entry.
    retrain
        The recipe of each retraining round.
    fractions
        The fraction of the final sparsity reached by each round: in (0, 1], the last one 1.
    baseline
        The name of the dense starting point's recipe in :data:`RECIPES`.

    Raises
    ------
    TypeError
        For a non-numeric sparsity or fraction, or ``retrain`` not a Recipe.
    ValueError
        For an empty ``sparsity``, a sparsity outside [0, 1), or ``fractions`` outside (0, 1] or
        not ending with 1.

    References
    ----------
    han2015learning
    """

    sparsity: dict[str, float]
    retrain: Recipe
    fractions: tuple[float, ...] = (0.5, 0.75, 0.9, 1.0)
    baseline: str = "default"

    def __post_init__(self):
        validate.mapping(self.sparsity, "sparsity")
        if not self.sparsity:
            raise ValueError("sparsity must name at least one layer")
        for layer, value in self.sparsity.items():
            validate.fraction(value, f"sparsity[{layer!r}]")
        if not isinstance(self.retrain, Recipe):
            raise TypeError(f"retrain must be an nncompress.train.Recipe, got {type(self.retrain).__name__}")
        fractions = [validate.number(f, f"fractions[{i}]", 0, 1, low_open=True) for i, f in enumerate(self.fractions)]
        if not fractions or fractions[-1] != 1:
            raise ValueError(f"fractions must lie in (0, 1] and end with 1, got {self.fractions!r}")

    def schedule(self) -> list[dict[str, float]]:
        """The per-round sparsities passed to :func:`nncompress.pruning.iterative_prune_`."""
        return [{layer: f * s for layer, s in self.sparsity.items()} for f in self.fractions]


# LeNet-5's retraining: the baseline's optimizer and weight decay at a fifth of its learning rate,
# with 1-pixel jitter, in seven equal steps. (Four rounds of Adam at lr 1e-3 without weight decay
# ended at 0.82 % test error, 0.17 point above the baseline; this recipe at 0.66 %.)
_LENET5_RETRAIN = Recipe(epochs=6, lr=0.01, weight_decay=5e-4, jitter=1)
_SEVEN_STEPS = tuple((i + 1) / 7 for i in range(7))
_HAN_LENET5 = {"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81}

# Pruned checkpoints, per model name. "han" uses the per-layer sparsities Han et al. (2015) report
# for LeNet-300-100 (8/9/26 % of weights kept) and LeNet-5 (66/12/8/19 %). LeNet-5's "deep", the
# start of the Deep Compression pipeline, keeps 1.5 times fewer weights in the fully connected
# layers (5.3 % and 12.7 %), which our baseline tolerates.
PRUNED: dict[str, dict[str, PruneRecipe]] = {
    "lenet300_100": {"han": PruneRecipe({"fc1": 0.92, "fc2": 0.91, "fc3": 0.74},
                                        Recipe(epochs=8, lr=1e-3, optimizer="adam"))},
    "lenet5": {"han": PruneRecipe(_HAN_LENET5, _LENET5_RETRAIN, fractions=_SEVEN_STEPS),
               "deep": PruneRecipe({k: 1 - (1 - v) / 1.5 if k.startswith("fc") else v for k, v in _HAN_LENET5.items()},
                                   _LENET5_RETRAIN, fractions=_SEVEN_STEPS)},
}


def make_pruned(name: str, recipe: str = "han", seed: int = 0, data: MNIST | None = None) -> dict:
    """Prune baseline ``(name, spec.baseline, seed)`` with ``PRUNED[name][recipe]``.

    Parameters
    ----------
    name
        A model name of :data:`PRUNED`.
    recipe
        A pruning recipe of ``PRUNED[name]``.
    seed
        The baseline's seed, which also seeds the retraining.
    data
        The data set (default: :func:`nncompress.data.load_mnist`).

    Returns
    -------
    dict
        The checkpoint dictionary (:func:`checkpoint_record`): the baked ``state_dict`` (plain
        weights, pruned entries exactly zero), the recipe, errors, time, and ``layer_sparsity``.

    Raises
    ------
    ValueError
        For an unknown model or pruning recipe.

    References
    ----------
    han2015learning
    """
    spec = lookup(PRUNED, name, recipe, "pruning recipe")
    data = data or load_mnist()
    model = baseline(name, spec.baseline, seed, data=data)
    start = time.perf_counter()
    pruning.iterative_prune_(model, data.train_x, data.train_y, spec.schedule(), spec.retrain, seed=seed)
    seconds = time.perf_counter() - start
    model = parametrizations.bake_(model)
    return checkpoint_record(model, name, recipe, spec, seed, data, seconds, layer_sparsity=pruning.layer_sparsity(model))


def pruned_filename(name: str, recipe: str, seed: int) -> str:
    """The file name of pruned checkpoint ``(name, recipe, seed)``.

    Parameters
    ----------
    name, recipe, seed
        Model name, pruning recipe name and seed.

    Returns
    -------
    str
        ``"<name>-pruned_<recipe>-seed<seed>.pt"``.
    """
    return checkpoint_filename(name, f"pruned_{recipe}", seed)


def pruned_info(name: str, recipe: str = "han", seed: int = 0, data: MNIST | None = None) -> dict:
    """The checkpoint dictionary of pruned model ``(name, recipe, seed)``.

    Shipped, cached, or made now by :func:`make_pruned` (see :func:`stored`).

    Parameters
    ----------
    name, recipe, seed, data
        As :func:`make_pruned`.

    Returns
    -------
    dict
        As :func:`make_pruned`.

    Raises
    ------
    ValueError
        For an unknown model or pruning recipe.

    References
    ----------
    han2015learning
    """
    spec = dataclasses.asdict(lookup(PRUNED, name, recipe, "pruning recipe"))
    return stored(pruned_filename(name, recipe, seed), spec, lambda: make_pruned(name, recipe, seed, data=data))


def pruned_baseline(name: str, recipe: str = "han", seed: int = 0, data: MNIST | None = None) -> nn.Module:
    """A pruned model from the store, in eval mode, with plain weights.

    Pruned entries are exact zeros and no masks are attached. Before training it further,
    re-attach them: ``pruning.apply_masks_(model, {f"{n}.weight": m.weight != 0 for n, m in
    nncompress.layers.select(model).items()})``.

    Parameters
    ----------
    name, recipe, seed, data
        As :func:`make_pruned`.

    Returns
    -------
    nn.Module
        The pruned model.

    Raises
    ------
    ValueError
        For an unknown model or pruning recipe.

    References
    ----------
    han2015learning
    """
    checkpoint = pruned_info(name, recipe, seed, data=data)
    return load_model(checkpoint)
