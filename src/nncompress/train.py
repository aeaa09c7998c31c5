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

from . import validate
from .data import MNIST

__all__ = ["Recipe", "set_seed", "random_shift", "fit", "evaluate", "predict", "test_error"]

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def set_seed(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a fresh seeded ``torch.Generator``."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of one training run; stored with every checkpoint.

    ``optimizer`` is ``"sgd"`` (with Nesterov momentum) or ``"adam"``; ``schedule`` is
    ``"cosine"`` (per-step cosine decay to zero) or ``"constant"``; ``jitter`` is the largest
    random translation in pixels applied to each training image (0 for none).
    """

    epochs: int
    lr: float
    batch_size: int = 128
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    jitter: int = 0

    def __post_init__(self):
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not isinstance(self.jitter, int) or not 0 <= self.jitter <= 4:
            raise ValueError(f"jitter must be an int in [0, 4], got {self.jitter!r}")



def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
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


def _cross_entropy(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(xb), yb)


def _make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0,
                           weight_decay=recipe.weight_decay)


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
    """Train ``model`` in place on ``(x, y)`` with ``recipe``; return the mean loss of each epoch.

    The run is deterministic for a given seed and thread count: shuffling and jitter draw from a
    generator seeded with ``seed``, and the global generators (dropout) are seeded too.
    ``loss_fn(model, xb, yb)`` replaces the default cross-entropy, e.g. with a distillation loss.
    ``on_epoch_end(epoch, model)`` is called after each epoch (``epoch`` counts from 1), and
    ``on_step_end(step, model)`` after each optimizer step (``step`` counts from 1), e.g. to prune
    on a schedule.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
    from tqdm import tqdm  # the text bar: works in terminals and notebooks without ipywidgets

    generator = set_seed(seed)
    loss_fn = loss_fn or _cross_entropy
    optimizer = _make_optimizer(model, recipe)
    steps_per_epoch = -(-len(x) // recipe.batch_size)
    scheduler = None
    if recipe.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs * steps_per_epoch)
    losses, step = [], 0
    bar = tqdm(range(1, recipe.epochs + 1), desc="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            xb = random_shift(x[idx], recipe.jitter, generator)
            loss = loss_fn(model, xb, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            if on_step_end is not None:
                on_step_end(step, model)
            total += loss.item() * len(idx)
        losses.append(total / len(x))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    model.eval()
    return losses


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) on ``x``, computed in batches: ``(n, classes)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``, as a fraction in [0, 1]."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}")
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
