"""Knowledge distillation: a student learns from a teacher's outputs and features.

Level (a), losses over tensors (:mod:`.losses`): :func:`kd_loss`, Hinton et al.'s soft-target
loss ``alpha T^2 KL(p_t || p_s) + (1 - alpha) CE``, and its high-temperature limit
:func:`logit_matching_loss`; :class:`HintLoss`, the FitNets hint with a learned regressor;
:func:`attention_map` and :func:`attention_transfer_loss`; :func:`rkd_distance_loss` and
:func:`rkd_angle_loss`, relational KD.

Level (b), training (:mod:`.loop`): loss *terms* (:class:`KD`, :class:`CrossEntropy`,
:class:`Hint`, :class:`Attention`, :class:`Relational`) and one loop, :func:`distill`, that trains
a student on a weighted sum of terms. Features are read with
:func:`nncompress.layers.capture_features`.

References: hinton2015distilling, ba2014deep, romero2015fitnets, zagoruyko2017paying,
park2019relational
"""

from .losses import (HintLoss, attention_map, attention_transfer_loss, kd_loss, logit_matching_loss,
                     rkd_angle_loss, rkd_distance_loss, soft_targets)
from .loop import KD, Attention, CrossEntropy, Hint, Outputs, Relational, Term, distill, teacher_signals

__all__ = [
    "soft_targets", "kd_loss", "logit_matching_loss", "HintLoss", "attention_map",
    "attention_transfer_loss", "rkd_distance_loss", "rkd_angle_loss",
    "Outputs", "Term", "CrossEntropy", "KD", "Hint", "Attention", "Relational", "distill",
    "teacher_signals",
]
