"""Trained baselines: :data:`RECIPES`, :func:`train_baseline`, :func:`baseline_info`, :func:`baseline`.

The shipped baselines are produced by ``python -m nncompress.baselines lenet300_100 lenet5 hinton_teacher
hinton_student``, ``python -m nncompress.baselines hinton_teacher --recipe paper`` and
``python -m nncompress.baselines hinton_student --recipe jitter``.
"""

from __future__ import annotations

import dataclasses
import time

from torch import nn

from .. import models
from ..data import MNIST, load_mnist
from ..train import Recipe, fit, set_seed
from .core import checkpoint_filename, checkpoint_record, load_model, lookup, stored

__all__ = ["RECIPES", "train_baseline", "baseline_info", "baseline"]

# The recipes the baselines are trained with, per model name.
RECIPES: dict[str, dict[str, Recipe]] = {
    "lenet300_100": {"default": Recipe(epochs=30, lr=0.05, weight_decay=1e-4)},
    "lenet5": {"default": Recipe(epochs=12, lr=0.05, weight_decay=5e-4)},
    # "paper" adds Hinton et al.'s max-norm constraint and trains five times longer.
    "hinton_teacher": {"default": Recipe(epochs=60, lr=0.05, weight_decay=0.0, jitter=2),
                       "paper": Recipe(epochs=300, lr=0.05, weight_decay=0.0, jitter=2, max_norm=3.5)},
    # "jitter": the control of the distilled student of the same name (students.py): labels, with
    # the jittered inputs and the 200 epochs that student trains with.
    "hinton_student": {"default": Recipe(epochs=30, lr=0.05, weight_decay=0.0),
                       "jitter": Recipe(epochs=200, lr=0.05, weight_decay=0.0, jitter=2)},
}


def _recipe(name: str, recipe: str) -> Recipe:
    models.build(name)  # validates the model name
    return lookup(RECIPES, name, recipe)



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
    return load_model(checkpoint)

