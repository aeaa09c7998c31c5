"""Knowledge distillation: a student learns from a teacher's outputs and features.

Level (a), losses over tensors:

- :func:`kd_loss`, Hinton et al.'s soft-target loss ``alpha T^2 KL(p_t || p_s) + (1 - alpha) CE``,
  and its high-temperature limit :func:`logit_matching_loss`;
- :class:`HintLoss`, the FitNets hint with a learned regressor;
- :func:`attention_map` and :func:`attention_transfer_loss`;
- :func:`rkd_distance_loss` and :func:`rkd_angle_loss`, relational KD.

Level (b), training: loss *terms* (:class:`KD`, :class:`CrossEntropy`, :class:`Hint`,
:class:`Attention`, :class:`Relational`) and one loop, :func:`distill`, that trains a student on
a weighted sum of terms. Features are read with :func:`capture_features` (forward hooks that are
always removed). When the transfer inputs are fixed (no jitter), what each term needs of the
teacher is computed once, before training, instead of at every step.

References: hinton2015distilling, ba2014deep, romero2015fitnets, zagoruyko2017paying,
park2019relational
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .layers import capture_features
from .train import Recipe, fit

__all__ = [
    "soft_targets", "kd_loss", "logit_matching_loss", "HintLoss", "attention_map",
    "attention_transfer_loss", "rkd_distance_loss", "rkd_angle_loss", "capture_features",
    "Outputs", "Term", "CrossEntropy", "KD", "Hint", "Attention", "Relational", "distill",
    "teacher_signals",
]


# --------------------------------------------------------------------------- checks

def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check_weight(weight) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
            math.isfinite(weight) and weight >= 0):
        raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
    return float(weight)


def _check_logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    for name, t in (("student_logits", student), ("teacher_logits", teacher)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a 2-d tensor (batch, classes), got {getattr(t, 'shape', type(t))}")
    if student.shape != teacher.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape, "
                         f"got {tuple(student.shape)} and {tuple(teacher.shape)}")


# --------------------------------------------------------------------------- level (a): losses

def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)`` over classes: ``(batch, classes)``. Higher T gives softer targets."""
    return F.softmax(logits / _check_temperature(temperature), dim=1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            alpha: float = 1.0, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch.

    ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(student_logits, targets)`` with
    ``p = softmax(logits / T)`` over the classes of ``(batch, classes)`` logits. The factor ``T^2``
    keeps the soft term's gradient at the scale of the hard one: with respect to the student
    logits it is ``T (p_s - p_t) / batch``. ``targets`` (class indices) are needed when
    ``alpha < 1``. The teacher's logits are treated as constants.

    Raises ValueError for ``T <= 0``, ``alpha`` outside [0, 1], logits of different shapes, or
    missing or mis-sized targets.

    References: hinton2015distilling
    """
    _check_logits(student_logits, teacher_logits)
    t = _check_temperature(temperature)
    alpha = _check_fraction(alpha, "alpha")
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    loss = alpha * t * t * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    if alpha < 1.0:
        if targets is None or targets.shape != student_logits.shape[:1]:
            raise ValueError(f"targets of shape ({len(student_logits)},) are needed when alpha < 1, "
                             f"got {None if targets is None else tuple(targets.shape)}")
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, targets)
    return loss


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The high-temperature limit of ``T^2 KL``: ``sum_i (d_i - mean(d))^2 / (2 N)``, batch-averaged.

    ``d = student_logits - teacher_logits`` over ``N`` classes. Subtracting the mean makes it
    blind to a constant shift of either model's logits, as softmax is. Ba and Caruana train
    students by regressing logits; Hinton et al. show that distillation tends to this as
    ``T -> infinity``.

    References: ba2014deep, hinton2015distilling
    """
    _check_logits(student_logits, teacher_logits)
    d = student_logits - teacher_logits.detach()  # (batch, classes)
    d = d - d.mean(dim=1, keepdim=True)
    return d.pow(2).sum(dim=1).mean() / (2 * student_logits.shape[1])


class HintLoss(nn.Module):
    """FitNets' hint: ``0.5 * mean((r(s) - t)^2)`` with a learned regressor ``r``.

    The student's guided layer ``s`` is usually thinner than the teacher's hint layer ``t``; the
    regressor maps it to the teacher's width: a 1x1 convolution for feature maps
    ``(batch, channels, h, w)``, a Linear layer for ``(batch, features)``. Both must have the same
    spatial size. The regressor's parameters train with the student and are discarded after.

    References: romero2015fitnets
    """

    def __init__(self, student_channels: int, teacher_channels: int, spatial: bool = True):
        super().__init__()
        for name, c in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise ValueError(f"{name} must be a positive int, got {c!r}")
        self.spatial = spatial
        self.regressor = (nn.Conv2d(student_channels, teacher_channels, 1) if spatial
                          else nn.Linear(student_channels, teacher_channels))

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        want = 4 if self.spatial else 2
        if student_features.dim() != want:
            raise ValueError(f"student_features must be {want}-d for this regressor, got {tuple(student_features.shape)}")
        guided = self.regressor(student_features)  # (batch, teacher_channels, ...)
        if guided.shape != teacher_features.shape:
            raise ValueError(f"the regressed student features {tuple(guided.shape)} must match the "
                             f"teacher's {tuple(teacher_features.shape)}")
        return 0.5 * (guided - teacher_features.detach()).pow(2).mean()


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Activation-based spatial attention: ``sum_c |A_c|^p`` over channels, flattened, unit L2 norm.

    ``features`` is ``(batch, channels, h, w)``; the result is ``(batch, h * w)`` with every row
    of L2 norm 1 (a row of zeros stays zero).

    References: zagoruyko2017paying
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        raise ValueError(f"features must be a 4-d tensor (batch, channels, h, w), got {getattr(features, 'shape', type(features))}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"p must be a number > 0, got {p!r}")
    return F.normalize(features.abs().pow(p).sum(dim=1).flatten(1), dim=1)  # (batch, h * w)


def attention_transfer_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                            p: float = 2.0) -> torch.Tensor:
    """Squared distance between normalized attention maps, ``||Q_s - Q_t||^2``, batch-averaged.

    Channel counts may differ; spatial sizes must match. Zagoruyko and Komodakis write the
    p-norm of the difference; like their code, we use its square, which is smooth at zero.

    References: zagoruyko2017paying
    """
    q_s, q_t = attention_map(student_features, p), attention_map(teacher_features.detach(), p)
    if student_features.shape[0] != teacher_features.shape[0] or q_s.shape != q_t.shape:
        raise ValueError(f"student and teacher features need the same batch and spatial size, got "
                         f"{tuple(student_features.shape)} and {tuple(teacher_features.shape)}")
    return (q_s - q_t).pow(2).sum(dim=1).mean()


def _embeddings(student: torch.Tensor, teacher: torch.Tensor, least: int) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = student.flatten(1), teacher.detach().flatten(1)
    if len(s) != len(t) or len(s) < least:
        raise ValueError(f"student and teacher embeddings need the same batch size, at least {least}; "
                         f"got {len(s)} and {len(t)}")
    return s, t


def _normalized_distances(e: torch.Tensor) -> torch.Tensor:
    off = ~torch.eye(len(e), dtype=torch.bool)
    d = torch.cdist(e, e)[off]  # (batch * (batch - 1),)
    return d / d.mean().clamp_min(1e-12)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relational KD, distance term: Huber loss between the two models' pairwise distances.

    Each model's distances over the batch are divided by their mean, so the loss does not depend
    on the scale of either embedding, nor on rotations or translations of it. Embeddings are
    ``(batch, ...)``, flattened per example; their widths may differ.

    References: park2019relational
    """
    s, t = _embeddings(student, teacher, 2)
    return F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))


def _angles(e: torch.Tensor) -> torch.Tensor:
    u = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # (anchor, other, width): unit e_j - e_i
    return torch.bmm(u, u.transpose(1, 2)).flatten()  # cosines of the angle at each anchor


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relational KD, angle term: Huber loss between the cosines of the angles of all triplets.

    Angles do not change under scaling, rotation or translation of either embedding.

    References: park2019relational
    """
    s, t = _embeddings(student, teacher, 3)
    return F.smooth_l1_loss(_angles(s), _angles(t))


# --------------------------------------------------------------------------- level (b): terms and loop

@dataclass
class Outputs:
    """What a model produced on a batch: its logits and the features captured from named layers."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)


class Term(nn.Module):
    """One weighted loss term of :func:`distill`.

    A term names the layers it reads (``student_layers``, ``teacher_layers``), says what it needs
    of the teacher with :meth:`signal` (a tensor with one row per example, computed once for the
    whole transfer set when the inputs are fixed), and computes its loss from the student's
    outputs, that signal and the labels with :meth:`loss`. Its own parameters (a hint's
    regressor) train with the student.
    """

    student_layers: tuple[str, ...] = ()
    teacher_layers: tuple[str, ...] = ()
    needs_teacher = True

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = _check_weight(weight)

    def signal(self, teacher: Outputs) -> torch.Tensor:
        """What the loss needs of the teacher on a batch (default: its logits)."""
        return teacher.logits

    def loss(self, student: Outputs, signal: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, student: Outputs, signal: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
        return self.weight * self.loss(student, signal, labels)


class CrossEntropy(Term):
    """Cross-entropy with the labels: training from scratch, or the hard part of a mixture."""

    needs_teacher = False

    def loss(self, student, signal, labels):
        return F.cross_entropy(student.logits, labels)


class KD(Term):
    """Hinton et al.'s loss, :func:`kd_loss`, at ``temperature`` with weight ``alpha`` on the soft part."""

    def __init__(self, temperature: float, alpha: float = 1.0, weight: float = 1.0):
        super().__init__(weight)
        self.temperature = _check_temperature(temperature)
        self.alpha = _check_fraction(alpha, "alpha")

    def loss(self, student, signal, labels):
        return kd_loss(student.logits, signal, self.temperature, self.alpha, labels)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, weight={self.weight}"


class Hint(Term):
    """FitNets' hint from ``teacher_layer``'s output to ``student_layer``'s, through a :class:`HintLoss`."""

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
    """

    def __init__(self, pairs: Sequence[tuple[str, str]], p: float = 2.0, weight: float = 1.0):
        super().__init__(weight)
        if not pairs or any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"pairs must be a non-empty list of (student_layer, teacher_layer), got {pairs!r}")
        self.pairs = [tuple(pair) for pair in pairs]
        self.student_layers = tuple(s for s, _ in self.pairs)
        self.teacher_layers = tuple(t for _, t in self.pairs)
        self.p = p

    def signal(self, teacher):
        return torch.cat([attention_map(teacher.features[t], self.p) for t in self.teacher_layers], dim=1)

    def loss(self, student, signal, labels):
        q_s = [attention_map(student.features[s], self.p) for s in self.student_layers]
        q_t = signal.split([q.shape[1] for q in q_s], dim=1)
        return sum((a - b).pow(2).sum(dim=1).mean() for a, b in zip(q_s, q_t))


class Relational(Term):
    """Relational KD on ``student_layer``'s and ``teacher_layer``'s outputs (``None``: the logits).

    ``distance_weight * rkd_distance_loss + angle_weight * rkd_angle_loss``.
    """

    def __init__(self, student_layer: str | None = None, teacher_layer: str | None = None,
                 distance_weight: float = 1.0, angle_weight: float = 2.0, weight: float = 1.0):
        super().__init__(weight)
        self.student_layers = () if student_layer is None else (student_layer,)
        self.teacher_layers = () if teacher_layer is None else (teacher_layer,)
        self.distance_weight, self.angle_weight = _check_weight(distance_weight), _check_weight(angle_weight)

    def signal(self, teacher):
        return teacher.features[self.teacher_layers[0]] if self.teacher_layers else teacher.logits

    def loss(self, student, signal, labels):
        s = student.features[self.student_layers[0]] if self.student_layers else student.logits
        return self.distance_weight * rkd_distance_loss(s, signal) + self.angle_weight * rkd_angle_loss(s, signal)


def _forward(model: nn.Module, features: dict[str, torch.Tensor], x: torch.Tensor) -> Outputs:
    logits = model(x)
    return Outputs(logits, dict(features))


@torch.no_grad()
def teacher_signals(teacher: nn.Module, terms: Sequence[Term], x: torch.Tensor, batch_size: int = 1000
                    ) -> list[torch.Tensor | None]:
    """Each term's :meth:`Term.signal` over all of ``x``, computed in batches with ``teacher`` in eval mode."""
    if not any(term.needs_teacher for term in terms):
        return [None] * len(terms)
    layers = [name for term in terms for name in term.teacher_layers]
    teacher.eval()
    chunks: list[list[torch.Tensor]] = [[] for _ in terms]
    with capture_features(teacher, layers) as features:
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


def distill(student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
            terms: Sequence[Term], seed: int = 0, signals: Sequence[torch.Tensor | None] | None = None,
            progress: bool = False, on_epoch_end: Callable[[int, nn.Module], None] | None = None) -> list[float]:
    """Train ``student`` in place on the transfer set ``(x, y)`` with the sum of ``terms``.

    The teacher stays frozen in eval mode. If ``recipe.jitter`` is 0, every term's teacher signal
    is computed once over ``x`` (:func:`teacher_signals`) and looked up per batch; otherwise the
    teacher runs on each jittered batch. Pass ``signals`` (from :func:`teacher_signals` on the same
    ``x`` and terms) to reuse them across runs, e.g. over seeds. The training itself is :func:`nncompress.train.fit`,
    so shuffling, schedule and seeding are those of every other chapter. Returns the mean loss of
    each epoch; ``on_epoch_end(epoch, student)`` is called after each epoch.

    Raises TypeError for a student, teacher or term of the wrong type, and ValueError for an empty
    list of terms, terms that need a teacher when ``teacher`` is None and no ``signals`` are
    given, signals that do not fit ``x`` and ``terms``, or mismatched ``x``/``y``.
    """
    if not isinstance(student, nn.Module):
        raise TypeError(f"student must be a torch.nn.Module, got {type(student).__name__}")
    if teacher is not None and not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module or None, got {type(teacher).__name__}")
    terms = list(terms)
    if not terms:
        raise ValueError("terms must name at least one loss term")
    if any(not isinstance(term, Term) for term in terms):
        raise TypeError(f"every term must be a nncompress.distillation.Term, got {[type(t).__name__ for t in terms]}")
    if teacher is None and signals is None and any(term.needs_teacher for term in terms):
        raise ValueError("these terms need a teacher, but teacher is None")
    if len(x) != len(y):
        raise ValueError(f"x and y must have equal length, got {len(x)} and {len(y)}")
    if signals is not None:
        if recipe.jitter != 0 or len(signals) != len(terms) or any(
                s is not None and len(s) != len(x) for s in signals):
            raise ValueError("signals must hold one entry per term, each with one row per example of x, "
                             "and need fixed inputs (recipe.jitter == 0)")
        cached = list(signals)
    elif teacher is not None and recipe.jitter == 0:
        cached = teacher_signals(teacher, terms, x)
    else:
        cached = None
    student_layers = [name for term in terms for name in term.student_layers]
    teacher_layers = [name for term in terms for name in term.teacher_layers] if cached is None else []
    model = _Student(student, terms)

    with capture_features(student, student_layers) as s_features, \
            capture_features(teacher or nn.Identity(), teacher_layers) as t_features:

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

        # fit's "labels" are row indices, so that the loss can look up labels and cached signals.
        callback = None if on_epoch_end is None else (lambda epoch, _: on_epoch_end(epoch, student))
        losses = fit(model, x, torch.arange(len(x)), recipe, seed=seed, loss_fn=loss_fn,
                     progress=progress, on_epoch_end=callback)
    student.eval()
    return losses
