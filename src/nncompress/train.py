"""Seeded training and evaluation loops, and the store of trained baselines.

A baseline is keyed by model name, recipe name and seed. :func:`baseline` looks for its
checkpoint among those shipped with the package, then in the cache directory
(``$NNCOMPRESS_CACHE`` or the user cache directory), and otherwise trains it deterministically
with :func:`train_baseline` and caches it. Checkpoints are read with
``torch.load(weights_only=True)``.

The shipped checkpoints are produced by the package's script, which calls
:func:`train_baseline`::

    python -m nncompress.baselines lenet300_100 lenet5
"""

from __future__ import annotations

import dataclasses
import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import models
from .data import MNIST, load_mnist

__all__ = [
    "Recipe",
    "RECIPES",
    "CACHE_ENV",
    "set_seed",
    "random_shift",
    "fit",
    "evaluate",
    "predict",
    "train_baseline",
    "baseline",
    "baseline_info",
    "stored",
    "cache_dir",
    "checkpoint_filename",
    "checkpoint_record",
    "write_checkpoint",
]

CACHE_ENV = "NNCOMPRESS_CACHE"
SHIPPED_DIR = Path(__file__).with_name("baselines")  # checkpoints shipped with the package

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


# The recipes the baselines are trained with, per model name.
RECIPES: dict[str, dict[str, Recipe]] = {
    "lenet300_100": {"default": Recipe(epochs=30, lr=0.05, weight_decay=1e-4)},
    "lenet5": {"default": Recipe(epochs=12, lr=0.05, weight_decay=5e-4)},
    "hinton_teacher": {"default": Recipe(epochs=60, lr=0.05, weight_decay=0.0, jitter=2)},
    "hinton_student": {"default": Recipe(epochs=30, lr=0.05, weight_decay=0.0)},
}


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


def cache_dir() -> Path:
    """Where baselines trained on this machine are cached: ``$NNCOMPRESS_CACHE`` or the user cache."""
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
    return f"{name}-{recipe}-seed{seed}.pt"


def train_baseline(name: str, recipe: str = "default", seed: int = 0, data: MNIST | None = None,
                   progress: bool = False) -> dict:
    """Train baseline ``(name, recipe, seed)`` from scratch; return its checkpoint dictionary.

    The dictionary holds ``state_dict``, the ``recipe`` fields, ``seed``, the ``val_error`` and
    ``test_error`` it reached, ``train_seconds`` and the ``torch`` version.
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
    """The checkpoint dictionary of a trained ``model``: a copy of its ``state_dict``, the model and
    recipe names, the recipe's fields (``spec``, a dataclass), ``seed``, the validation and test
    errors on ``data``, the training ``seconds``, thread count and torch version, and ``extra``."""
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
    """Write ``checkpoint`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def stored(filename: str, spec: dict, make: Callable[[], dict]) -> dict:
    """The checkpoint ``filename`` whose stored ``"recipe"`` equals ``spec``, made by ``make()`` if needed.

    Shipped checkpoints come first, then the cache. A checkpoint whose stored recipe differs from
    ``spec`` is stale: a stale or unreadable cached one is rebuilt, a stale shipped one raises (the
    shipped files must be regenerated with ``python -m nncompress.baselines``).
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
    """The checkpoint dictionary of baseline ``(name, recipe, seed)``, training it if needed
    (see :func:`stored` for where it comes from)."""
    spec = dataclasses.asdict(_recipe(name, recipe))
    return stored(checkpoint_filename(name, recipe, seed), spec,
                  lambda: train_baseline(name, recipe, seed, data=data, progress=progress))


def baseline(name: str, recipe: str = "default", seed: int = 0, data: MNIST | None = None,
             progress: bool = False) -> nn.Module:
    """A trained baseline model in eval mode (see :func:`baseline_info` for where it comes from)."""
    checkpoint = baseline_info(name, recipe, seed, data=data, progress=progress)
    model = models.build(name)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
