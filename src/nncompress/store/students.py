"""Distilled students: :data:`DISTILLED` (:class:`DistillRecipe`), :func:`make_distilled`,
:func:`distilled_info`, :func:`distilled`.

A student is trained on the first ``n_transfer`` training images in one or more stages, each a
:func:`nncompress.distillation.distill` run with its own loss terms and recipe, against a stored
baseline teacher. The distillation chapter compares many such students over several seeds;
they ship with the package, made by::

    python -m nncompress.baselines lenet5_thin --distilled scratch kd attention1 hint_kd --seed 0 1 2
    python -m nncompress.baselines lenet5_thin --distilled attention5 attention20
    python -m nncompress.baselines hinton_tiny --distilled scratch kd_t1 kd_t2 kd_t4 kd_t8 kd_t20 --seed 0 1 2
    python -m nncompress.baselines hinton_student --distilled kd_t20 kd_t20_jitter kd_t20_alpha05_jitter
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

from .. import models, validate
from ..data import MNIST, load_mnist
from ..distillation import KD, Attention, CrossEntropy, Hint, Term, distill
from ..train import Recipe, set_seed
from .baselines import baseline
from .core import checkpoint_filename, checkpoint_record, load_model, lookup, stored

__all__ = ["TERMS", "DistillStage", "DistillRecipe", "DISTILLED", "make_distilled", "distilled_filename",
           "distilled_info", "distilled", "training_recipe", "describe_targets"]

# The loss terms a stage may name, with the keyword arguments of their constructors.
TERMS: dict[str, type[Term]] = {"ce": CrossEntropy, "kd": KD, "hint": Hint, "attention": Attention}


@dataclass(frozen=True)
class DistillStage:
    """One training stage of a distilled student: loss terms and the recipe they train with.

    Parameters
    ----------
    terms
        ``((kind, kwargs), ...)``: each a key of :data:`TERMS` and the keyword arguments of its
        constructor, e.g. ``("kd", {"temperature": 4.0, "alpha": 0.9})``. The terms are built
        afresh for each student (a hint's regressor starts new in every run).
    recipe
        The training recipe of this stage.

    Raises
    ------
    TypeError
        For a recipe that is not a Recipe, or a term that is not a (kind, mapping) pair.
    ValueError
        For no terms, or an unknown kind.

    References
    ----------
    hinton2015distilling
    """

    terms: tuple[tuple[str, dict], ...]
    recipe: Recipe

    def __post_init__(self):
        if not isinstance(self.recipe, Recipe):
            raise TypeError(f"recipe must be an nncompress.train.Recipe, got {type(self.recipe).__name__}")
        if not self.terms:
            raise ValueError("terms must name at least one loss term")
        for i, term in enumerate(self.terms):
            if not (isinstance(term, tuple) and len(term) == 2 and isinstance(term[1], Mapping)):
                raise TypeError(f"terms[{i}] must be a (kind, kwargs) pair, got {term!r}")
            if term[0] not in TERMS:
                raise ValueError(f"terms[{i}] has unknown kind {term[0]!r}; known: {sorted(TERMS)}")

    def build_terms(self) -> list[Term]:
        """Fresh loss terms of this stage (a term with parameters draws them from torch's generator)."""
        return [TERMS[kind](**kwargs) for kind, kwargs in self.terms]

    @property
    def needs_teacher(self) -> bool:
        """Whether any term of this stage reads the teacher."""
        return any(TERMS[kind].needs_teacher for kind, _ in self.terms)


@dataclass(frozen=True)
class DistillRecipe:
    """How a distilled student of the store is made (see :func:`make_distilled`).

    Parameters
    ----------
    teacher
        The teacher: a model name whose stored baseline (recipe ``teacher_recipe``, seed 0) teaches.
    stages
        The training stages, run in order on the same student.
    n_transfer
        The transfer set: the first ``n_transfer`` training images and their labels, >= 1.
    teacher_recipe
        The teacher baseline's recipe name in :data:`~nncompress.store.RECIPES`.

    Raises
    ------
    TypeError, ValueError
        For no stages, a stage that is not a :class:`DistillStage`, or a bad ``n_transfer``.

    References
    ----------
    hinton2015distilling
    """

    teacher: str
    stages: tuple[DistillStage, ...]
    n_transfer: int = 10_000
    teacher_recipe: str = "default"

    def __post_init__(self):
        if not self.stages:
            raise ValueError("stages must hold at least one DistillStage")
        if any(not isinstance(stage, DistillStage) for stage in self.stages):
            raise TypeError(f"every stage must be a DistillStage, got {[type(s).__name__ for s in self.stages]}")
        validate.integer(self.n_transfer, "n_transfer", 1)


def _kd(temperature: float) -> tuple[str, dict]:
    return ("kd", {"temperature": temperature, "alpha": 0.9})


def _one_stage(recipe: Recipe, *terms: tuple[str, dict], teacher: str) -> DistillRecipe:
    return DistillRecipe(teacher, (DistillStage(tuple(terms), recipe),))


_THIN = Recipe(epochs=12, lr=2e-3, optimizer="adam")  # the thin LeNet-5 of the hints notebook
_THIN_ATTENTION = {w: ("attention", {"pairs": (("conv1", "conv1"), ("conv2", "conv2")), "weight": w})
                   for w in (1.0, 5.0, 20.0)}
_THIN_HINT = ("hint", {"student_layer": "conv2", "teacher_layer": "conv2", "student_channels": 10,
                       "teacher_channels": 50})
_TINY = Recipe(epochs=15, lr=1e-3, optimizer="adam")  # the 2x30 MLP of the Hinton notebook
# Hinton et al.'s full experiment: the 2x800 student learns from the paper teacher on the whole training
# set, on fixed inputs as in the paper, or on inputs jittered like the teacher's (the teacher then
# labels each shifted batch afresh), with the paper's small weight on the labels or, jittered, an
# equal one (alpha = 0.5).
_FULL = {"teacher": "hinton_teacher", "n_transfer": 55_000, "teacher_recipe": "paper"}
_FULL_KD = (_kd(20.0),)

# Distilled students, per student model name, then recipe name.
DISTILLED: dict[str, dict[str, DistillRecipe]] = {
    "lenet5_thin": {
        "scratch": _one_stage(_THIN, ("ce", {}), teacher="lenet5"),
        "kd": _one_stage(_THIN, _kd(4.0), teacher="lenet5"),
        **{f"attention{w:g}": _one_stage(_THIN, _kd(4.0), term, teacher="lenet5")
           for w, term in _THIN_ATTENTION.items()},
        "hint_kd": DistillRecipe("lenet5", (DistillStage((_THIN_HINT,), Recipe(epochs=2, lr=2e-3, optimizer="adam")),
                                            DistillStage((_kd(4.0),), _THIN))),
    },
    "hinton_tiny": {
        "scratch": _one_stage(_TINY, ("ce", {}), teacher="hinton_teacher"),
        **{f"kd_t{t}": _one_stage(_TINY, _kd(float(t)), teacher="hinton_teacher") for t in (1, 2, 4, 8, 20)},
    },
    "hinton_student": {
        "kd_t20": DistillRecipe(stages=(DistillStage(_FULL_KD, Recipe(epochs=200, lr=0.005)),), **_FULL),
        "kd_t20_jitter": DistillRecipe(stages=(DistillStage(_FULL_KD, Recipe(epochs=200, lr=0.005, jitter=2)),),
                                       **_FULL),
        "kd_t20_alpha05_jitter": DistillRecipe(stages=(DistillStage((("kd", {"temperature": 20.0, "alpha": 0.5}),),
                                                                    Recipe(epochs=200, lr=0.005, jitter=2)),), **_FULL),
    },
}


def make_distilled(name: str, recipe: str, seed: int = 0, data: MNIST | None = None) -> dict:
    """Train student ``name`` with ``DISTILLED[name][recipe]``.

    Seeds torch with ``seed``, builds the student, then runs each stage's
    :func:`~nncompress.distillation.distill` with fresh terms, the stage's recipe and ``seed``.

    Parameters
    ----------
    name
        A student model name of :data:`DISTILLED` (and of :data:`nncompress.models.MODELS`).
    recipe
        A recipe name of ``DISTILLED[name]``.
    seed
        Seeds the student's initialization and every stage's shuffling.
    data
        The data set (default: :func:`nncompress.data.load_mnist`).

    Returns
    -------
    dict
        The checkpoint dictionary (:func:`~nncompress.store.checkpoint_record`), with the mean
        loss of each epoch of each stage in ``stage_losses``.

    Raises
    ------
    ValueError
        For an unknown model or recipe name.

    References
    ----------
    hinton2015distilling
    """
    spec = lookup(DISTILLED, name, recipe, "distillation recipe")
    data = data or load_mnist()
    x, y = data.train_x[:spec.n_transfer], data.train_y[:spec.n_transfer]
    needs_teacher = any(stage.needs_teacher for stage in spec.stages)
    teacher = baseline(spec.teacher, spec.teacher_recipe, data=data) if needs_teacher else None
    set_seed(seed)
    student = models.build(name)
    start = time.perf_counter()
    losses = [distill(student, teacher, x, y, stage.recipe, stage.build_terms(), seed=seed) for stage in spec.stages]
    seconds = time.perf_counter() - start
    return checkpoint_record(student, name, recipe, spec, seed, data, seconds, stage_losses=losses)


def distilled_filename(name: str, recipe: str, seed: int) -> str:
    """The file name of distilled checkpoint ``(name, recipe, seed)``.

    Parameters
    ----------
    name, recipe, seed
        Student model name, distillation recipe name and seed.

    Returns
    -------
    str
        ``"<name>-distilled_<recipe>-seed<seed>.pt"``.
    """
    return checkpoint_filename(name, f"distilled_{recipe}", seed)


def distilled_info(name: str, recipe: str, seed: int = 0, data: MNIST | None = None) -> dict:
    """The checkpoint dictionary of distilled student ``(name, recipe, seed)``.

    Shipped, cached, or made now by :func:`make_distilled` (see :func:`~nncompress.store.stored`).

    Parameters
    ----------
    name, recipe, seed, data
        As :func:`make_distilled`.

    Returns
    -------
    dict
        As :func:`make_distilled`.

    Raises
    ------
    ValueError
        For an unknown model or recipe name.

    References
    ----------
    hinton2015distilling
    """
    spec = dataclasses.asdict(lookup(DISTILLED, name, recipe, "distillation recipe"))
    return stored(distilled_filename(name, recipe, seed), spec, lambda: make_distilled(name, recipe, seed, data=data))


def distilled(name: str, recipe: str, seed: int = 0, data: MNIST | None = None) -> nn.Module:
    """A distilled student from the store, in eval mode.

    Parameters
    ----------
    name, recipe, seed, data
        As :func:`make_distilled`.

    Returns
    -------
    nn.Module
        The trained student.

    Raises
    ------
    ValueError
        For an unknown model or recipe name.

    References
    ----------
    hinton2015distilling
    """
    return load_model(distilled_info(name, recipe, seed, data=data))


def _final_stage(checkpoint: Mapping) -> dict | None:
    """The last stage of a distilled checkpoint's recipe, or None for a baseline's."""
    validate.mapping(checkpoint, "checkpoint")
    if not isinstance(checkpoint.get("recipe"), Mapping):
        raise ValueError("checkpoint must be a stored checkpoint dictionary with a 'recipe' mapping")
    stages = checkpoint["recipe"].get("stages")
    return stages[-1] if stages else None


def training_recipe(checkpoint: Mapping) -> dict:
    """The training recipe of a stored checkpoint, as recorded in it.

    A baseline's is its recipe; a distilled student's is that of its final stage (the one that
    trains the whole student; an earlier hint stage trains only up to the hinted layer).

    Parameters
    ----------
    checkpoint
        A checkpoint dictionary, e.g. from :func:`~nncompress.store.baseline_info` or
        :func:`distilled_info`.

    Returns
    -------
    dict
        The fields of :class:`nncompress.train.Recipe` (``epochs``, ``lr``, ``jitter``, ...).

    Raises
    ------
    TypeError
        If ``checkpoint`` is not a mapping.
    ValueError
        If it records no recipe.
    """
    stage = _final_stage(checkpoint)
    return dict(stage["recipe"] if stage else checkpoint["recipe"])


def describe_targets(checkpoint: Mapping) -> str:
    """What a stored checkpoint learned from, in words: ``"labels"`` for a baseline, else the
    loss terms of a distilled student's final stage, e.g. ``"soft and labels (T = 20, α = 0.9)"``.

    Parameters
    ----------
    checkpoint
        As :func:`training_recipe`.

    Returns
    -------
    str
        The terms joined with ``" + "``: ``"labels"`` (``ce``), ``"soft and labels (T, α)"``
        (``kd``; ``α`` weighs the soft targets; ``"soft (T)"`` when it is 1), ``"hint (layer)"``,
        ``"attention (weight)"``.

    Raises
    ------
    TypeError, ValueError
        As :func:`training_recipe`.

    References
    ----------
    hinton2015distilling
    """
    stage = _final_stage(checkpoint)
    if stage is None:
        return "labels"
    def kd(kw):
        alpha = kw.get("alpha", 1.0)
        return f"soft (T = {kw['temperature']:g})" if alpha == 1 else \
            f"soft and labels (T = {kw['temperature']:g}, α = {alpha:g})"

    words = {"ce": lambda kw: "labels", "kd": kd,
             "hint": lambda kw: f"hint ({kw['student_layer']})",
             "attention": lambda kw: f"attention ({kw.get('weight', 1.0):g})"}
    return " + ".join(words[kind](kwargs) for kind, kwargs in stage["terms"])
