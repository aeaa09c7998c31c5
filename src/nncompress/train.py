"""Seeded training and evaluation loops.

:func:`fit` trains any model in place with a :class:`Recipe`, deterministically for a given seed;
:func:`predict`, :func:`evaluate` and :func:`test_error` measure it. Trained checkpoints are kept
by :mod:`nncompress.store`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import validate
from .data import MNIST

__all__ = ["Recipe", "set_seed", "fit", "evaluate", "predict", "test_error"]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def set_seed(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators.

    Parameters
    ----------
    seed
        A non-negative int.

    Returns
    -------
    torch.Generator
        A fresh generator seeded with ``seed``.

    Raises
    ------
    TypeError, ValueError
        If ``seed`` is not an int >= 0.
    """
    seed = validate.integer(seed, "seed", 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of one training run; stored with every checkpoint.

    Parameters
    ----------
    epochs
        Passes over the training set, >= 1.
    lr
        Peak learning rate, > 0.
    batch_size
        Examples per step, >= 1.
    optimizer
        ``"sgd"`` (with Nesterov momentum when ``momentum > 0``) or ``"adam"``.
    momentum
        SGD momentum in [0, 1).
    weight_decay
        L2 penalty, >= 0.
    schedule
        ``"cosine"`` (per-step cosine decay to zero) or ``"constant"``.
    jitter
        The largest random translation in pixels applied to each training image, 0 to 4.
    max_norm
        After every step, rescale each unit's incoming weight vector (a row of a linear layer's
        weight, a filter of a convolution) to norm at most ``max_norm``, in every weight layer but
        the last (the output layer), as Srivastava et al. did with dropout; 0 (default) for no
        constraint.

    Raises
    ------
    TypeError, ValueError
        For a field outside the ranges above, naming the field.

    References
    ----------
    srivastava2014dropout
    """

    epochs: int
    lr: float
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    jitter: int = 0
    max_norm: float = 0.0

    def __post_init__(self):
        validate.integer(self.epochs, "epochs", 1)
        validate.number(self.lr, "lr", 0.0, low_open=True)
        validate.integer(self.batch_size, "batch_size", 1)
        validate.choice(self.optimizer, "optimizer", ("sgd", "adam"))
        validate.number(self.momentum, "momentum", 0.0, 1.0, high_open=True)
        validate.number(self.weight_decay, "weight_decay", 0.0)
        validate.choice(self.schedule, "schedule", ("cosine", "constant"))
        validate.integer(self.jitter, "jitter", 0, 4)
        validate.number(self.max_norm, "max_norm", 0.0)


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of ``x`` ``(batch, c, h, w)`` by a random integer offset in
    ``[-max_shift, max_shift]`` along each axis, filling with the image's background (its minimum)."""
    if max_shift == 0:
        return x
    b, _, h, w = x.shape
    fill = x.amin().item()
    padded = nn.functional.pad(x, (max_shift,) * 4, value=fill)  # (batch, c, h + 2s, w + 2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (batch, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (batch, 1, 1, w)
    return padded[torch.arange(b)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def _hidden_layers(model: nn.Module) -> list[nn.Module]:
    """The linear and convolutional layers of ``model`` but the last, in module order."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]


@torch.no_grad()
def _max_norm_(layers: list[nn.Module], max_norm: float) -> None:
    """Rescale each output unit's incoming weights in ``layers`` to norm at most ``max_norm``."""
    for layer in layers:
        w = layer.weight.flatten(1)  # (units, fan-in), a view
        norms = w.norm(dim=1, keepdim=True)
        w.mul_(norms.clamp(max=max_norm) / norms.clamp_min(1e-12))


def _cross_entropy(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(xb), yb)


def _make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0,
                           weight_decay=recipe.weight_decay)


def _check_pair(x, y) -> None:
    validate.tensor(x, "x")
    validate.tensor(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x and y must be of equal length, got {len(x)} and {len(y)}")


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    progress: bool = False,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    on_step_end: Callable[[int, nn.Module], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``(x, y)`` with ``recipe``.

    The run is deterministic for a given seed and thread count: shuffling and jitter draw from a
    generator seeded with ``seed``, and the global generators (dropout) are seeded too.

    Parameters
    ----------
    model
        Any module; it is left in eval mode.
    x, y
        Inputs and targets, equal in length.
    recipe
        The hyperparameters.
    seed
        Seeds the shuffling, the jitter and the global generators.
    loss_fn
        ``loss_fn(model, xb, yb) -> loss`` replaces the default cross-entropy, e.g. with a
        distillation loss.
    progress
        Show a progress bar over epochs.
    on_epoch_end, on_step_end
        ``f(epoch, model)`` after each epoch and ``f(step, model)`` after each optimizer step
        (both count from 1), e.g. to prune on a schedule.

    Returns
    -------
    list of float
        The mean training loss of each epoch.

    Raises
    ------
    TypeError
        If ``model`` is not a module or ``x``/``y`` are not tensors.
    ValueError
        If ``x`` and ``y`` are empty or differ in length, for a bad ``seed``, or for
        ``recipe.max_norm`` on a model whose constrained weights are parametrized.
    """
    validate.module(model)
    _check_pair(x, y)
    from tqdm import tqdm  # the text bar: works in terminals and notebooks without ipywidgets

    generator = set_seed(seed)
    optimizer = _make_optimizer(model, recipe)
    steps_per_epoch = -(-len(x) // recipe.batch_size)
    scheduler = None
    if recipe.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs * steps_per_epoch)
    constrained = _hidden_layers(model) if recipe.max_norm > 0 else []
    if any(parametrize.is_parametrized(layer, "weight") for layer in constrained):
        raise ValueError("recipe.max_norm needs plain weights: bake the model's parametrizations first "
                         "(nncompress.parametrizations.bake_) or train with max_norm=0")
    losses, step = [], 0
    bar = tqdm(range(1, recipe.epochs + 1), desc="epoch", disable=not progress, leave=False)
    for epoch in bar:
        loss, step = _epoch(model, x, y, recipe, generator, loss_fn or _cross_entropy, optimizer, scheduler,
                            step, on_step_end, constrained)
        losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    model.eval()
    return losses


def _epoch(model, x, y, recipe, generator, loss_fn, optimizer, scheduler, step, on_step_end,
           constrained) -> tuple[float, int]:
    """One pass over ``(x, y)`` in a random order; returns the mean loss and the step count."""
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(x), recipe.batch_size):
        idx = order[start : start + recipe.batch_size]
        xb = _random_shift(x[idx], recipe.jitter, generator)
        loss = loss_fn(model, xb, y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _max_norm_(constrained, recipe.max_norm)
        if scheduler is not None:
            scheduler.step()
        step += 1
        if on_step_end is not None:
            on_step_end(step, model)
        total += loss.item() * len(idx)
    return total / len(x), step


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Outputs of ``model`` in eval mode on ``x``, computed in batches.

    Parameters
    ----------
    model
        Any module; its training flag is restored afterwards.
    x
        Inputs, batched along the first axis.
    batch_size
        Inputs per forward pass, >= 1.

    Returns
    -------
    torch.Tensor
        The concatenated outputs, e.g. logits ``(n, classes)``.

    Raises
    ------
    TypeError
        If ``model`` is not a module or ``x`` not a tensor.
    ValueError
        If ``x`` is empty or ``batch_size`` < 1.
    """
    validate.module(model)
    validate.tensor(x, "x")
    batch_size = validate.integer(batch_size, "batch_size", 1)
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``.

    Parameters
    ----------
    model
        A classifier returning logits ``(batch, classes)``.
    x, y
        Inputs and integer labels, equal in length.
    batch_size
        Inputs per forward pass.

    Returns
    -------
    float
        The fraction of correct predictions, in [0, 1].

    Raises
    ------
    TypeError, ValueError
        As :func:`predict`; ValueError also if ``x`` and ``y`` differ in length.
    """
    _check_pair(x, y)
    return (predict(model, x, batch_size).argmax(1) == y).float().mean().item()


def test_error(model: nn.Module, data: MNIST, split: str = "test", batch_size: int = 1000) -> float:
    """Top-1 error of ``model`` on a split of ``data``, in percent: the book's one error measure.

    Parameters
    ----------
    model
        A classifier returning logits ``(batch, classes)``.
    data
        The data set (:func:`nncompress.data.load_mnist`).
    split
        ``"test"`` (default), ``"val"`` or ``"train"``.
    batch_size
        Inputs per forward pass.

    Returns
    -------
    float
        ``100 * (1 - accuracy)``.

    Raises
    ------
    TypeError
        If ``model`` is not a module.
    ValueError
        For an unknown ``split``.
    """
    validate.module(model)
    x, y = data.split(validate.choice(split, "split", ("train", "val", "test")))
    return 100.0 * (1.0 - evaluate(model, x, y, batch_size))
