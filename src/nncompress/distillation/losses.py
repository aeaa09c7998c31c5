"""Distillation losses over tensors: soft targets, Hinton's loss and its logit-matching limit,
FitNets hints, attention transfer and relational KD. Every loss averages over a non-empty batch;
the teacher's tensors are treated as constants."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .. import validate

__all__ = ["soft_targets", "kd_loss", "logit_matching_loss", "HintLoss", "attention_map",
           "attention_transfer_loss", "rkd_distance_loss", "rkd_angle_loss"]


def _temperature(temperature) -> float:
    """``temperature`` as a finite float > 0."""
    return validate.number(temperature, "temperature", 0.0, low_open=True)


def _logits(student: torch.Tensor, teacher: torch.Tensor) -> None:
    """Both logits 2-d ``(batch, classes)``, non-empty, of the same shape."""
    validate.tensor(student, "student_logits", dim=2)
    validate.tensor(teacher, "teacher_logits", dim=2)
    if student.shape != teacher.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape, "
                         f"got {tuple(student.shape)} and {tuple(teacher.shape)}")


def soft_targets(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(logits / T)`` over classes. Higher ``T`` gives softer targets.

    Parameters
    ----------
    logits
        ``(batch, classes)``.
    temperature
        ``T``, a finite number > 0.

    Returns
    -------
    torch.Tensor
        ``(batch, classes)`` probabilities.

    Raises
    ------
    TypeError, ValueError
        If ``logits`` is not a 2-d tensor or ``temperature`` not a finite number > 0.

    References
    ----------
    hinton2015distilling
    """
    validate.tensor(logits, "logits", dim=2, nonempty=False)
    return F.softmax(logits / _temperature(temperature), dim=1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            alpha: float = 1.0, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton et al.'s distillation loss, averaged over the batch.

    ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(student_logits, targets)`` with
    ``p = softmax(logits / T)``. The factor ``T^2`` keeps the soft term's gradient at the scale of
    the hard one: with respect to the student logits it is ``T (p_s - p_t) / batch``.

    Parameters
    ----------
    student_logits, teacher_logits
        ``(batch, classes)``, the same shape, batch >= 1.
    temperature
        ``T``, a finite number > 0.
    alpha
        The weight of the soft term, in [0, 1].
    targets
        ``(batch,)`` class indices; needed when ``alpha < 1``.

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Raises
    ------
    TypeError
        For arguments of the wrong kind.
    ValueError
        For an empty batch, logits of different shapes, ``T <= 0``, ``alpha`` outside [0, 1],
        or missing or mis-sized ``targets``.

    References
    ----------
    hinton2015distilling
    """
    _logits(student_logits, teacher_logits)
    t = _temperature(temperature)
    alpha = validate.number(alpha, "alpha", 0.0, 1.0)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=1)
    loss = alpha * t * t * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    if alpha < 1.0:
        if not isinstance(targets, torch.Tensor) or targets.shape != student_logits.shape[:1]:
            raise ValueError(f"targets of shape ({len(student_logits)},) are needed when alpha < 1, "
                             f"got {getattr(targets, 'shape', None) if targets is not None else None}")
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, targets)
    return loss


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The high-temperature limit of ``T^2 KL``: ``sum_i (d_i - mean(d))^2 / (2 N)``, batch-averaged.

    ``d = student_logits - teacher_logits`` over ``N`` classes. Subtracting the mean makes it
    blind to a constant shift of either model's logits, as softmax is.

    Parameters
    ----------
    student_logits, teacher_logits
        ``(batch, classes)``, the same shape, batch >= 1.

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Raises
    ------
    TypeError, ValueError
        For non-tensors, an empty batch, or logits that are not 2-d or differ in shape.

    References
    ----------
    ba2014deep, hinton2015distilling
    """
    _logits(student_logits, teacher_logits)
    d = student_logits - teacher_logits.detach()  # (batch, classes)
    d = d - d.mean(dim=1, keepdim=True)
    return d.pow(2).sum(dim=1).mean() / (2 * student_logits.shape[1])


class HintLoss(nn.Module):
    """FitNets' hint: ``0.5 * mean((r(s) - t)^2)`` with a learned regressor ``r``.

    The regressor maps the student's guided layer to the teacher's width: a 1x1 convolution for
    feature maps ``(batch, channels, h, w)``, a Linear layer for ``(batch, features)``. Its
    parameters train with the student and are discarded after.

    Parameters
    ----------
    student_channels, teacher_channels
        Channel (or feature) counts, ints >= 1.
    spatial
        True for feature maps, False for flat features.

    Raises
    ------
    TypeError, ValueError
        If a channel count is not an int >= 1; on call, for an empty batch or features whose
        shapes do not fit.

    References
    ----------
    romero2015fitnets
    """

    def __init__(self, student_channels: int, teacher_channels: int, spatial: bool = True):
        super().__init__()
        student_channels = validate.integer(student_channels, "student_channels", 1)
        teacher_channels = validate.integer(teacher_channels, "teacher_channels", 1)
        self.spatial = bool(spatial)
        self.regressor = (nn.Conv2d(student_channels, teacher_channels, 1) if spatial
                          else nn.Linear(student_channels, teacher_channels))

    def forward(self, student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        validate.tensor(student_features, "student_features", dim=4 if self.spatial else 2)
        guided = self.regressor(student_features)  # (batch, teacher_channels, ...)
        if guided.shape != teacher_features.shape:
            raise ValueError(f"the regressed student features {tuple(guided.shape)} must match the "
                             f"teacher's {tuple(teacher_features.shape)}")
        return 0.5 * (guided - teacher_features.detach()).pow(2).mean()


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Activation-based spatial attention: ``sum_c |A_c|^p`` over channels, flattened, unit L2 norm.

    Parameters
    ----------
    features
        ``(batch, channels, h, w)``.
    p
        The exponent, a finite number > 0.

    Returns
    -------
    torch.Tensor
        ``(batch, h * w)``, every row of L2 norm 1 (a row of zeros stays zero).

    Raises
    ------
    TypeError, ValueError
        If ``features`` is not a 4-d tensor or ``p`` not a number > 0.

    References
    ----------
    zagoruyko2017paying
    """
    validate.tensor(features, "features", dim=4, nonempty=False)
    p = validate.number(p, "p", 0.0, low_open=True)
    return F.normalize(features.abs().pow(p).sum(dim=1).flatten(1), dim=1)  # (batch, h * w)


def attention_transfer_loss(student_features: torch.Tensor, teacher_features: torch.Tensor,
                            p: float = 2.0) -> torch.Tensor:
    """Squared distance between normalized attention maps, ``||Q_s - Q_t||^2``, batch-averaged.

    Channel counts may differ; spatial sizes must match. Zagoruyko and Komodakis write the
    p-norm of the difference; like their code, we use its square, which is smooth at zero.

    Parameters
    ----------
    student_features, teacher_features
        ``(batch, channels, h, w)`` with the same batch >= 1 and spatial size.
    p
        The exponent of :func:`attention_map`.

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Raises
    ------
    TypeError, ValueError
        For non-tensors, an empty batch, or mismatched batch or spatial sizes.

    References
    ----------
    zagoruyko2017paying
    """
    validate.tensor(student_features, "student_features", dim=4)
    validate.tensor(teacher_features, "teacher_features", dim=4)
    q_s, q_t = attention_map(student_features, p), attention_map(teacher_features.detach(), p)
    if student_features.shape[0] != teacher_features.shape[0] or q_s.shape != q_t.shape:
        raise ValueError(f"student and teacher features need the same batch and spatial size, got "
                         f"{tuple(student_features.shape)} and {tuple(teacher_features.shape)}")
    return (q_s - q_t).pow(2).sum(dim=1).mean()


def _embeddings(student: torch.Tensor, teacher: torch.Tensor, least: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both embeddings flattened per example, checked for one batch of at least ``least``."""
    validate.tensor(student, "student", nonempty=False)
    validate.tensor(teacher, "teacher", nonempty=False)
    s, t = student.flatten(1), teacher.detach().flatten(1)
    if len(s) != len(t) or len(s) < least:
        raise ValueError(f"student and teacher embeddings need the same batch size, at least {least}; "
                         f"got {len(s)} and {len(t)}")
    return s, t


def _normalized_distances(e: torch.Tensor) -> torch.Tensor:
    """Pairwise distances of distinct examples, divided by their mean."""
    off = ~torch.eye(len(e), dtype=torch.bool)
    d = torch.cdist(e, e)[off]  # (batch * (batch - 1),)
    return d / d.mean().clamp_min(1e-12)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relational KD, distance term: Huber loss between the two models' pairwise distances.

    Each model's distances over the batch are divided by their mean, so the loss does not depend
    on the scale of either embedding, nor on rotations or translations of it.

    Parameters
    ----------
    student, teacher
        Embeddings ``(batch, ...)``, flattened per example, with the same batch >= 2; their widths
        may differ.

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Raises
    ------
    TypeError, ValueError
        For non-tensors, or batches that differ or hold fewer than 2 examples.

    References
    ----------
    park2019relational
    """
    s, t = _embeddings(student, teacher, 2)
    return F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))


def _angles(e: torch.Tensor) -> torch.Tensor:
    """Cosines of the angle at each anchor of every triplet."""
    u = F.normalize(e[None, :, :] - e[:, None, :], dim=2)  # (anchor, other, width): unit e_j - e_i
    return torch.bmm(u, u.transpose(1, 2)).flatten()


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Relational KD, angle term: Huber loss between the cosines of the angles of all triplets.

    Angles do not change under scaling, rotation or translation of either embedding.

    Parameters
    ----------
    student, teacher
        Embeddings ``(batch, ...)`` with the same batch >= 3.

    Returns
    -------
    torch.Tensor
        The scalar loss.

    Raises
    ------
    TypeError, ValueError
        For non-tensors, or batches that differ or hold fewer than 3 examples.

    References
    ----------
    park2019relational
    """
    s, t = _embeddings(student, teacher, 3)
    return F.smooth_l1_loss(_angles(s), _angles(t))
