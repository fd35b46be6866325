"""Feature-based KD by attention maps: the student learns WHERE the teachers look.

Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (activation-based attention,
p = 2):

    Q(F) = vec( mean_c F_c^2 ) / || vec( mean_c F_c^2 ) ||_2
    L    = beta / 2 * sum over taps of mean over pixels ( Q(F_s) - Q(resize(F_t)) )^2,  beta = 1000

as in the authors' code (`beta / 2 * sum(at_loss(x, y) for ...)` with
`at_loss = (at(x) - at(y)).pow(2).mean()`); mdistiller sums over taps too. The term returns the
sum over taps; its weight is beta / 2 = 500. Channel counts need not match, so no
adapter is needed. The teacher's map is resized to the student's spatial size before the
attention is taken. Averaged over teachers.
"""

from __future__ import annotations

from typing import Sequence

import keras

from keras_endokd.distill.base import DistillationTerm, resize_like, teacher_mean, weighted_mean
from keras_endokd.models.taps import FEATURE_TAPS


def attention_map(features):
    """[B, H, W, C] -> L2-normalized spatial attention [B, H*W]."""
    a = keras.ops.mean(keras.ops.square(features), axis=-1)
    a = keras.ops.reshape(a, (-1, a.shape[1] * a.shape[2]))
    return a / (keras.ops.norm(a, axis=-1, keepdims=True) + 1e-8)


def attention_transfer_loss(student_features, teacher_features, sample_weight=None):
    """mean over pixels of (Q_s - Q_t)^2, reduced over the batch by `weighted_mean`."""
    height, width = student_features.shape[1], student_features.shape[2]
    teacher_features = resize_like(teacher_features, height, width)
    diff = attention_map(student_features) - attention_map(teacher_features)
    return weighted_mean(keras.ops.mean(keras.ops.square(diff), axis=-1), sample_weight)


@keras.saving.register_keras_serializable(package="keras_endokd")
class AttentionTransfer(DistillationTerm):
    """Attention transfer over tap pairs of the same name (default: all three taps)."""

    def __init__(self, taps: Sequence[str] = FEATURE_TAPS, **kwargs):
        super().__init__(**kwargs)
        bad = [t for t in taps if t not in FEATURE_TAPS]
        if bad or not taps:
            raise ValueError(f"Attention-transfer taps must be among {FEATURE_TAPS}, got {list(taps)}.")
        self.taps = tuple(taps)
        self.student_taps = self.teacher_taps = self.taps

    @classmethod
    def default_loss_weights(cls):
        # beta / 2 with the paper's beta = 1000: normalized maps make each tap's raw loss ~1e-3.
        return {"loss_attention": 500.0}

    def compute_loss(self, teacher_outputs, student_outputs, labels=None, training=True, sample_weight=None):
        per_teacher = [
            keras.ops.sum(
                keras.ops.stack(
                    [attention_transfer_loss(student_outputs[tap], t[tap], sample_weight) for tap in self.taps]
                )
            )
            for t in teacher_outputs
        ]
        return {"loss_attention": teacher_mean(per_teacher)}

    def get_config(self):
        return {**super().get_config(), "taps": list(self.taps)}
