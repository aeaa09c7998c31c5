"""The store's machinery: where checkpoints live, how they are written, read and made on demand.

A checkpoint is a dictionary of tensors and plain values (:func:`checkpoint_record`), keyed by a
file name. :func:`stored` returns the shipped file (``nncompress/baselines/``), else the cached one
(:func:`cache_dir`), else makes it and caches it; a checkpoint whose recipe differs from the
current one is stale and never used.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .. import models, validate
from ..data import MNIST
from ..train import evaluate

__all__ = ["CACHE_ENV", "SHIPPED_DIR", "cache_dir", "checkpoint_filename", "checkpoint_record", "write_checkpoint",
           "read_checkpoint", "ADDED_RECIPE_FIELDS", "stored", "load_model", "lookup"]

CACHE_ENV = "NNCOMPRESS_CACHE"
SHIPPED_DIR = Path(__file__).parent.with_name("baselines")  # checkpoints shipped with the package


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


# Recipe fields added after checkpoints were shipped, with the value every older checkpoint had.
ADDED_RECIPE_FIELDS = {"max_norm": 0.0}


def _upgrade(recorded):
    """``recorded`` with every training recipe in it (a dict holding ``"optimizer"`` and
    ``"schedule"``) given the fields of :data:`ADDED_RECIPE_FIELDS` it lacks, recursively."""
    if isinstance(recorded, dict):
        recorded = {k: _upgrade(v) for k, v in recorded.items()}
        if "optimizer" in recorded and "schedule" in recorded:
            recorded = {**recorded, **{k: v for k, v in ADDED_RECIPE_FIELDS.items() if k not in recorded}}
        return recorded
    if isinstance(recorded, (list, tuple)):
        return type(recorded)(_upgrade(v) for v in recorded)
    return recorded


def read_checkpoint(path: Path) -> dict:
    """Read a checkpoint file safely (``weights_only``), on the CPU.

    A recipe recorded before a field of :class:`~nncompress.train.Recipe` existed is given that
    field's old value (:data:`ADDED_RECIPE_FIELDS`), so that it compares equal to today's recipe.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    dict
        The checkpoint dictionary.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "recipe" in checkpoint:
        checkpoint["recipe"] = _upgrade(checkpoint["recipe"])
    return checkpoint


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
        checkpoint = read_checkpoint(shipped)
        if checkpoint["recipe"] != spec:
            raise RuntimeError(f"shipped checkpoint {shipped} was made with a different recipe; "
                               "regenerate it with `python -m nncompress.baselines`")
        return checkpoint
    cached = cache_dir() / filename
    if cached.exists():
        try:
            checkpoint = read_checkpoint(cached)
        except Exception:  # unreadable cache entry: rebuild it
            checkpoint = None
        if checkpoint is not None and checkpoint.get("recipe") == spec:
            return checkpoint
    checkpoint = make()
    write_checkpoint(checkpoint, cached)
    return checkpoint


def load_model(checkpoint: dict) -> nn.Module:
    """The model a checkpoint holds: ``models.build(checkpoint["model"])`` with its weights.

    Parameters
    ----------
    checkpoint
        A checkpoint dictionary (:func:`checkpoint_record`).

    Returns
    -------
    nn.Module
        A fresh model in eval mode holding the checkpoint's weights.
    """
    model = models.build(checkpoint["model"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def lookup(registry: dict, name: str, recipe: str, kind: str = "recipe"):
    """``registry[name][recipe]``, or a ValueError listing the recipes known for model ``name``.

    Parameters
    ----------
    registry
        ``{model name: {recipe name: recipe}}``, e.g. :data:`~nncompress.store.PRUNED`.
    name, recipe
        Model and recipe names.
    kind
        What a recipe of this registry is called in the error message.

    Returns
    -------
    object
        The recipe.

    Raises
    ------
    ValueError
        If ``registry`` has no recipe ``recipe`` for model ``name``.
    """
    known = registry.get(name, {})
    if recipe not in known:
        raise ValueError(f"unknown {kind} {recipe!r} for model {name!r}; known: {sorted(known)}")
    return known[recipe]
