"""The store of trained checkpoints: baselines and pruned models, shipped or made on demand.

A checkpoint is keyed by model name, recipe name and seed. :func:`stored` looks for it among
the files shipped with the package (``nncompress/baselines/``), then in the cache directory
(``$NNCOMPRESS_CACHE`` or the user cache directory), and otherwise makes it deterministically
and caches it. A stored checkpoint records the recipe it was made with; one whose recipe differs
from the current recipe is stale and never used. Checkpoints are read with
``torch.load(weights_only=True)``.

- Baselines: :data:`RECIPES`, :func:`train_baseline`, :func:`baseline_info`, :func:`baseline`.
- Pruned models: :data:`PRUNED` (:class:`PruneRecipe`), :func:`make_pruned`, :func:`pruned_info`,
  :func:`pruned_baseline`.

The shipped checkpoints are produced by the package's script::

    python -m nncompress.baselines lenet300_100 lenet5
    python -m nncompress.baselines --pruned han lenet300_100 lenet5
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import models
from .data import MNIST, load_mnist
from . import parametrizations, pruning, validate
from .train import Recipe, evaluate, fit, set_seed

__all__ = [
    "CACHE_ENV", "SHIPPED_DIR", "RECIPES", "cache_dir", "checkpoint_filename", "checkpoint_record",
    "write_checkpoint", "stored", "train_baseline", "baseline_info", "baseline",
    "PruneRecipe", "PRUNED", "make_pruned", "pruned_filename", "pruned_info", "pruned_baseline",
]

CACHE_ENV = "NNCOMPRESS_CACHE"
SHIPPED_DIR = Path(__file__).with_name("baselines")  # checkpoints shipped with the package

# The recipes the baselines are trained with, per model name.
RECIPES: dict[str, dict[str, Recipe]] = {
    "lenet300_100": {"default": Recipe(epochs=30, lr=0.05, weight_decay=1e-4)},
    "lenet5": {"default": Recipe(epochs=12, lr=0.05, weight_decay=5e-4)},
    "hinton_teacher": {"default": Recipe(epochs=60, lr=0.05, weight_decay=0.0, jitter=2)},
    "hinton_student": {"default": Recipe(epochs=30, lr=0.05, weight_decay=0.0)},
}


def cache_dir() -> Path:
    """Where checkpoints made on this machine are cached.

    Returns
    -------
    pathlib.Path
        ``$NNCOMPRESS_CACHE`` if set, else the user cache directory's ``nncompress/baselines``.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("nncompress")) / "baselines"


def _recipe(name: str, recipe: str) -> Recipe:
    models.build(name)  # validates the model name
    if recipe not in RECIPES.get(name, {}):
        raise ValueError(f"unknown recipe {recipe!r} for model {name!r}; known: {sorted(RECIPES.get(name, {}))}")
    return RECIPES[name][recipe]


def checkpoint_filename(name: str, recipe: str, seed: int) -> str:
    """The file name of checkpoint ``(name, recipe, seed)``: ``"<name>-<recipe>-seed<seed>.pt"``.

    Parameters
    ----------
    name, recipe
        Model and recipe names.
    seed
        The seed the checkpoint was made with, an int >= 0.

    Returns
    -------
    str
        The file name.

    Raises
    ------
    TypeError, ValueError
        If ``seed`` is not an int >= 0.
    """
    return f"{name}-{recipe}-seed{validate.integer(seed, 'seed', 0)}.pt"


def train_baseline(name: str, recipe: str = "default", seed: int = 0, data: MNIST | None = None,
                   progress: bool = False) -> dict:
    """Train baseline ``(name, recipe, seed)`` from scratch with :data:`RECIPES` ``[name][recipe]``.

    Parameters
    ----------
    name
        A model of :data:`nncompress.models.MODELS`.
    recipe
        A recipe name of :data:`RECIPES` for that model.
    seed
        Seeds the initialization and the training run.
    data
        The data (default: :func:`nncompress.data.load_mnist`).
    progress
        Show a progress bar.

    Returns
    -------
    dict
        The checkpoint (see :func:`checkpoint_record`).

    Raises
    ------
    ValueError
        For an unknown model or recipe name.
    """
    spec = _recipe(name, recipe)
    data = data or load_mnist()
    set_seed(seed)
    model = models.build(name)
    start = time.perf_counter()
    fit(model, data.train_x, data.train_y, spec, seed=seed, progress=progress)
    return checkpoint_record(model, name, recipe, spec, seed, data, time.perf_counter() - start)


def checkpoint_record(model: nn.Module, name: str, recipe_name: str, spec, seed: int, data: MNIST,
                      seconds: float, **extra) -> dict:
    """The checkpoint dictionary of a trained ``model``.

    Parameters
    ----------
    model
        The trained model.
    name, recipe_name
        Its model and recipe names.
    spec
        The recipe, a dataclass (stored as a dict of its fields).
    seed
        The seed it was made with.
    data
        The data whose validation and test splits it is evaluated on.
    seconds
        How long making it took.
    **extra
        Further entries to store.

    Returns
    -------
    dict
        ``state_dict`` (a copy), ``model``, ``recipe_name``, ``recipe``, ``seed``, ``val_error``
        and ``test_error`` (fractions), ``train_seconds``, ``threads``, ``torch`` (version),
        and ``extra``.
    """
    return {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "model": name,
        "recipe_name": recipe_name,
        "recipe": dataclasses.asdict(spec),
        "seed": seed,
        "val_error": 1.0 - evaluate(model, data.val_x, data.val_y),
        "test_error": 1.0 - evaluate(model, data.test_x, data.test_y),
        "train_seconds": seconds,
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
        **extra,
    }


def _read(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write ``checkpoint`` to ``path`` atomically (a temporary file, then a rename).

    Parameters
    ----------
    checkpoint
        A dictionary of tensors and plain values (loadable with ``weights_only=True``).
    path
        The target file; its folder is created if needed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def stored(filename: str, spec: dict, make: Callable[[], dict]) -> dict:
    """The checkpoint ``filename`` made with recipe ``spec``: shipped, cached, or made now.

    Shipped checkpoints come first, then the cache. A checkpoint whose stored ``"recipe"``
    differs from ``spec`` is stale: a stale or unreadable cached one is made again, a stale
    shipped one raises (the shipped files must be regenerated with
    ``python -m nncompress.baselines``). Any kind of checkpoint can be stored this way.

    Parameters
    ----------
    filename
        The checkpoint's file name.
    spec
        The recipe as a dict; it must equal the checkpoint's ``"recipe"`` entry.
    make
        Makes the checkpoint dictionary when none is stored; the result is cached.

    Returns
    -------
    dict
        The checkpoint.

    Raises
    ------
    RuntimeError
        If a shipped checkpoint was made with another recipe.
    """
    shipped = SHIPPED_DIR / filename
    if shipped.exists():
        checkpoint = _read(shipped)
        if checkpoint["recipe"] != spec:
            raise RuntimeError(f"shipped checkpoint {shipped} was made with a different recipe; "
                               "regenerate it with `python -m nncompress.baselines`")
        return checkpoint
    cached = cache_dir() / filename
    if cached.exists():
        try:
            checkpoint = _read(cached)
        except Exception:  # unreadable cache entry: rebuild it
            checkpoint = None
        if checkpoint is not None and checkpoint.get("recipe") == spec:
            return checkpoint
    checkpoint = make()
    write_checkpoint(checkpoint, cached)
    return checkpoint


def baseline_info(name: str, recipe: str = "default", seed: int = 0, data: MNIST | None = None,
                  progress: bool = False) -> dict:
    """The checkpoint dictionary of baseline ``(name, recipe, seed)``, trained if not stored.

    Parameters
    ----------
    name, recipe, seed, data, progress
        As :func:`train_baseline`.

    Returns
    -------
    dict
        The checkpoint (see :func:`stored` for where it comes from).

    Raises
    ------
    ValueError
        For an unknown model or recipe name.
    """
    spec = dataclasses.asdict(_recipe(name, recipe))
    return stored(checkpoint_filename(name, recipe, seed), spec,
                  lambda: train_baseline(name, recipe, seed, data=data, progress=progress))


def baseline(name: str, recipe: str = "default", seed: int = 0, data: MNIST | None = None,
             progress: bool = False) -> nn.Module:
    """A trained baseline model from the store.

    Parameters
    ----------
    name, recipe, seed, data, progress
        As :func:`train_baseline`.

    Returns
    -------
    nn.Module
        A fresh model in eval mode holding the checkpoint's weights.

    Raises
    ------
    ValueError
        For an unknown model or recipe name.
    """
    checkpoint = baseline_info(name, recipe, seed, data=data, progress=progress)
    model = models.build(name)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


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


# Pruned checkpoints, per model name. "han" uses the per-layer sparsities Han et al. (2015) report
# for LeNet-300-100 (8/9/26 % of weights kept) and LeNet-5 (66/12/8/19 %).
PRUNED: dict[str, dict[str, PruneRecipe]] = {
    "lenet300_100": {"han": PruneRecipe({"fc1": 0.92, "fc2": 0.91, "fc3": 0.74},
                                        Recipe(epochs=8, lr=1e-3, optimizer="adam"))},
    "lenet5": {"han": PruneRecipe({"conv1": 0.34, "conv2": 0.88, "fc1": 0.92, "fc2": 0.81},
                                  Recipe(epochs=8, lr=1e-3, optimizer="adam"))},
}


def _prune_recipe(name: str, recipe: str) -> PruneRecipe:
    if recipe not in PRUNED.get(name, {}):
        raise ValueError(f"unknown pruning recipe {recipe!r} for model {name!r}; known: {sorted(PRUNED.get(name, {}))}")
    return PRUNED[name][recipe]


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
    spec = _prune_recipe(name, recipe)
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
    spec = dataclasses.asdict(_prune_recipe(name, recipe))
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
    model = models.build(name)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
