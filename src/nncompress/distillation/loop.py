"""Distillation training: loss *terms* and one loop, :func:`distill`, that trains a student on a
weighted sum of them. Features are read with :func:`nncompress.layers.capture_features` (forward
hooks that are always removed). When the transfer inputs are fixed (no jitter), what each term
needs of the teacher is computed once, before training, instead of at every step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .. import validate
from ..layers import capture_features
from ..train import Recipe, fit
from .losses import HintLoss, attention_map, kd_loss, rkd_angle_loss, rkd_distance_loss

__all__ = ["Outputs", "Term", "CrossEntropy", "KD", "Hint", "Attention", "Relational", "teacher_signals", "distill"]


@dataclass
class Outputs:
    """What a model produced on a batch.

    Parameters
    ----------
    logits
        ``(batch, classes)``.
    features
        ``{layer name: output}`` of the layers the terms read.
    """

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class Term(nn.Module):
    """One weighted loss term of :func:`distill`.

    A term names the layers it reads (``student_layers``, ``teacher_layers``), says what it needs
    of the teacher with :meth:`signal` (a tensor with one row per example, computed once for the
    whole transfer set when the inputs are fixed), and computes its loss from the student's
    outputs, that signal and the labels with :meth:`loss`. Its own parameters (a hint's
    regressor) train with the student. Subclasses override :meth:`loss` (and :meth:`signal`).

    Parameters
    ----------
    weight
        The term's weight in the sum, a finite number >= 0.

    Raises
    ------
    TypeError, ValueError
        If ``weight`` is not a finite number >= 0.

    References
    ----------
    hinton2015distilling
    """

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    needs_teacher = True

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = validate.number(weight, "weight", 0.0)

    def signal(self, teacher: Outputs) -> torch.Tensor:
        """What the loss needs of the teacher on a batch (default: its logits)."""
        return teacher.logits

    def loss(self, student: Outputs, signal: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        """The unweighted loss on a batch."""
        raise NotImplementedError

    def forward(self, student: Outputs, signal: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        return self.weight * self.loss(student, signal, labels)


class CrossEntropy(Term):
    """Cross-entropy with the labels: training from scratch, or the hard part of a mixture.

    Parameters
    ----------
    weight
        As :class:`Term`.

    Raises
    ------
    TypeError, ValueError
        As :class:`Term`.

    References
    ----------
    hinton2015distilling
    """

    needs_teacher = False

    def loss(self, student, signal, labels):
        validate.tensor(student.logits, "student logits", dim=2)
        return F.cross_entropy(student.logits, labels)


class KD(Term):
    """Hinton et al.'s loss, :func:`~nncompress.distillation.kd_loss`, as a term.

    Parameters
    ----------
    temperature
        ``T``, a finite number > 0.
    alpha
        The weight of the soft part, in [0, 1].
    weight
        As :class:`Term`.

    Raises
    ------
    TypeError, ValueError
        For arguments out of range (each message names its argument).

    References
    ----------
    hinton2015distilling
    """

    def __init__(self, temperature: float, alpha: float = 1.0, weight: float = 1.0):
        super().__init__(weight)
        self.temperature = validate.number(temperature, "temperature", 0.0, low_open=True)
        self.alpha = validate.number(alpha, "alpha", 0.0, 1.0)

    def loss(self, student, signal, labels):
        return kd_loss(student.logits, signal, self.temperature, self.alpha, labels)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, weight={self.weight}"


class Hint(Term):
    """FitNets' hint from ``teacher_layer``'s output to ``student_layer``'s, through a :class:`HintLoss`.

    Parameters
    ----------
    student_layer, teacher_layer
        Qualified names of the guided and the hint layer.
    student_channels, teacher_channels, spatial
        As :class:`HintLoss`.
    weight
        As :class:`Term`.

    Raises
    ------
    TypeError, ValueError
        As :class:`HintLoss` and :class:`Term`.

    References
    ----------
    romero2015fitnets
    """

    def __init__(self, student_layer: str, teacher_layer: str, student_channels: int, teacher_channels: int,
                 spatial: bool = True, weight: float = 1.0):
        super().__init__(weight)
        self.student_layers, self.teacher_layers = (student_layer,), (teacher_layer,)
        self.hint = HintLoss(student_channels, teacher_channels, spatial)

    def signal(self, teacher):
        return teacher.features[self.teacher_layers[0]]

    def loss(self, student, signal, labels):
        return self.hint(student.features[self.student_layers[0]], signal)


class Attention(Term):
    """Attention transfer between pairs ``(student_layer, teacher_layer)``, summed over the pairs.

    The signal is the teacher's attention maps, concatenated: far smaller than its features.

    Parameters
    ----------
    pairs
        A non-empty list of ``(student_layer, teacher_layer)`` names.
    p
        The exponent of :func:`~nncompress.distillation.attention_map`, a number > 0.
    weight
        As :class:`Term`.

    Raises
    ------
    TypeError, ValueError
        For empty or malformed ``pairs``, a bad ``p`` or ``weight``.

    References
    ----------
    zagoruyko2017paying
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], p: float = 2.0, weight: float = 1.0):
        super().__init__(weight)
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"pairs must be a non-empty list of (student_layer, teacher_layer), got {pairs!r}")
        self.pairs = [tuple(pair) for pair in pairs]
        self.student_layers = tuple(s for s, _ in self.pairs)
        self.teacher_layers = tuple(t for _, t in self.pairs)
        self.p = validate.number(p, "p", 0.0, low_open=True)

    def signal(self, teacher):
        return torch.cat([attention_map(teacher.features[t], self.p) for t in self.teacher_layers], dim=1)

    def loss(self, student, signal, labels):
        q_s = [attention_map(student.features[s], self.p) for s in self.student_layers]
        validate.tensor(q_s[0], "student features")
        q_t = signal.split([q.shape[1] for q in q_s], dim=1)
        return sum((a - b).pow(2).sum(dim=1).mean() for a, b in zip(q_s, q_t))


class Relational(Term):
    """Relational KD on ``student_layer``'s and ``teacher_layer``'s outputs (``None``: the logits).

    ``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``.

    Parameters
    ----------
    student_layer, teacher_layer
        Qualified layer names, or None for the logits.
    distance_weight, angle_weight
        Finite numbers >= 0.
    weight
        As :class:`Term`.

    Raises
    ------
    TypeError, ValueError
        For a weight that is not a finite number >= 0 (the message names it).

    References
    ----------
    park2019relational
    """

    def __init__(self, student_layer: str | None = None, teacher_layer: str | None = None,
                 distance_weight: float = 1.0, angle_weight: float = 2.0, weight: float = 1.0):
        super().__init__(weight)
        self.student_layers = () if student_layer is None else (student_layer,)
        self.teacher_layers = () if teacher_layer is None else (teacher_layer,)
        self.distance_weight = validate.number(distance_weight, "distance_weight", 0.0)
        self.angle_weight = validate.number(angle_weight, "angle_weight", 0.0)

    def signal(self, teacher):
        return teacher.features[self.teacher_layers[0]] if self.teacher_layers else teacher.logits

    def loss(self, student, signal, labels):
        s = student.features[self.student_layers[0]] if self.student_layers else student.logits
        return self.distance_weight * rkd_distance_loss(s, signal) + self.angle_weight * rkd_angle_loss(s, signal)


def _capture(model: nn.Module | None, layers: list[str]) -> AbstractContextManager:
    """:func:`capture_features` of ``layers``, or an empty dict when there are none to read."""
    return capture_features(model, layers) if layers else nullcontext({})


def _forward(model: nn.Module, features: dict[str, torch.Tensor], x: torch.Tensor) -> Outputs:
    """``model``'s logits on ``x`` and the features its hooks captured."""
    logits = model(x)
    return Outputs(logits, dict(features))


@torch.no_grad()
def teacher_signals(teacher: nn.Module, terms: Sequence[Term], x: torch.Tensor, batch_size: int = 1000
                    ) -> list[torch.Tensor | None]:
    """Each term's :meth:`Term.signal` over all of ``x``, computed in batches in eval mode.

    Parameters
    ----------
    teacher
        Any module; it is put in eval mode.
    terms
        The terms of a :func:`distill` run.
    x
        The transfer inputs, ``(N, ...)``.
    batch_size
        Inputs per forward pass.

    Returns
    -------
    list
        One tensor with ``N`` rows per term, or None for a term that needs no teacher.

    Raises
    ------
    TypeError, ValueError
        For a teacher that is not a module, an empty ``x``, a bad ``batch_size``, or a layer the
        teacher does not have.

    References
    ----------
    hinton2015distilling
    """
    terms = _check_terms(terms)
    if not any(term.needs_teacher for term in terms):
        return [None] * len(terms)
    validate.module(teacher, "teacher")
    validate.tensor(x, "x")
    batch_size = validate.integer(batch_size, "batch_size", 1)
    layers = [name for term in terms for name in term.teacher_layers]
    teacher.eval()
    chunks: list[list[torch.Tensor]] = [[] for _ in terms]
    with _capture(teacher, layers) as features:
        for start in range(0, len(x), batch_size):
            out = _forward(teacher, features, x[start:start + batch_size])
            for chunk, term in zip(chunks, terms):
                if term.needs_teacher:
                    chunk.append(term.signal(out))
    return [torch.cat(chunk) if chunk else None for chunk in chunks]


class _Student(nn.Module):
    """The student and the terms, so that the optimizer sees the terms' parameters too."""

    def __init__(self, student: nn.Module, terms: Sequence[Term]):
        super().__init__()
        self.student, self.terms = student, nn.ModuleList(terms)


def _check_terms(terms) -> list[Term]:
    """``terms`` as a non-empty list of :class:`Term`."""
    terms = list(terms)
    if not terms:
        raise ValueError("terms must name at least one loss term")
    if any(not isinstance(term, Term) for term in terms):
        raise TypeError(f"every term must be a nncompress.distillation.Term, got {[type(t).__name__ for t in terms]}")
    return terms


def _cached_signals(teacher, terms, x, recipe: Recipe, signals) -> list | None:
    """The teacher signals to look up per batch, or None when the teacher must run on each batch."""
    if signals is not None:
        if recipe.jitter != 0 or len(signals) != len(terms) or any(
                s is not None and len(s) != len(x) for s in signals):
            raise ValueError("signals must hold one entry per term, each with one row per example of x, "
                             "and need fixed inputs (recipe.jitter == 0)")
        return list(signals)
    if teacher is not None and recipe.jitter == 0:
        return teacher_signals(teacher, terms, x)
    return None


def _loss_fn(student, teacher, terms, y, cached, s_features, t_features) -> Callable:
    """The loss of a batch: the student's outputs against cached or freshly computed signals."""

    def loss_fn(model: _Student, xb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out = _forward(student, s_features, xb)
        if cached is not None:
            signals = [None if c is None else c[rows] for c in cached]
        elif teacher is not None:
            with torch.no_grad():
                t_out = _forward(teacher.eval(), t_features, xb)
                signals = [term.signal(t_out) if term.needs_teacher else None for term in terms]
        else:
            signals = [None] * len(terms)
        return sum(term(out, s, y[rows]) for term, s in zip(terms, signals))

    return loss_fn


def distill(student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
            terms: Sequence[Term], seed: int = 0, signals: Sequence[torch.Tensor | None] | None = None,
            progress: bool = False, on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> list[float]:
    """Train ``student`` in place on the transfer set ``(x, y)`` with the sum of ``terms``.

    The teacher stays frozen in eval mode. If ``recipe.jitter`` is 0, every term's teacher signal
    is computed once over ``x`` (:func:`teacher_signals`) and looked up per batch; otherwise the
    teacher runs on each jittered batch. The training itself is :func:`nncompress.train.fit`, so
    shuffling, schedule and seeding are those of every other chapter.

    Parameters
    ----------
    student
        The module to train (in place; it is left in eval mode).
    teacher
        The frozen teacher, or None when no term needs one or ``signals`` are given.
    x, y
        Transfer inputs ``(N, ...)`` and labels ``(N,)``.
    recipe
        Epochs, learning rate, optimizer, batch size, jitter.
    terms
        The loss terms, summed.
    seed
        Seeds shuffling and jitter.
    signals
        :func:`teacher_signals` of the same ``x`` and terms, to reuse across runs (e.g. seeds).
    progress
        Show a progress bar.
    on_epoch_end
        Called as ``on_epoch_end(epoch, student)`` after each epoch.

    Returns
    -------
    list of float
        The mean loss of each epoch.

    Raises
    ------
    TypeError
        For a student, teacher or term of the wrong type.
    ValueError
        For an empty list of terms, terms that need a teacher when there is none, signals that do
        not fit ``x`` and ``terms``, or mismatched ``x``/``y``.

    References
    ----------
    hinton2015distilling, romero2015fitnets
    """
    validate.module(student, "student")
    if teacher is not None:
        validate.module(teacher, "teacher")
    terms = _check_terms(terms)
    if teacher is None and signals is None and any(term.needs_teacher for term in terms):
        raise ValueError("these terms need a teacher, but teacher is None")
    if len(x) != len(y):
        raise ValueError(f"x and y must have equal length, got {len(x)} and {len(y)}")
    cached = _cached_signals(teacher, terms, x, recipe, signals)
    student_layers = [name for term in terms for name in term.student_layers]
    teacher_layers = [name for term in terms for name in term.teacher_layers] if cached is None else []
    with ExitStack() as stack:
        s_features = stack.enter_context(_capture(student, student_layers))
        t_features = stack.enter_context(_capture(teacher, teacher_layers))
        loss_fn = _loss_fn(student, teacher, terms, y, cached, s_features, t_features)
        # fit's "labels" are row indices, so that the loss can look up labels and cached signals.
        callback = None if on_epoch_end is None else (lambda epoch, _: on_epoch_end(epoch, student))
        losses = fit(_Student(student, terms), x, torch.arange(len(x)), recipe, seed=seed, loss_fn=loss_fn,
                     progress=progress, on_epoch_end=callback)
    student.eval()
    return losses
