"""Feature-based KD by attention maps: the student learns WHERE the teachers look.

Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (activation-based attention,
p = 2):

    Q(F) = vec( mean_c F_c^2 ) / || vec( mean_c F_c^2 ) ||_2
    L    = beta / 2 * sum over taps of mean over pixels ( Q(F_s) - Q(resize(F_t)) )^2,  beta = 1000

as in the authors' code (`beta / 2 * sum(at_loss(x, y) for ...)` with
`at_loss = (at(x) - at(y)).pow(2).mean()`); mdistiller sums over taps too. The term returns the
sum over taps; its weight is beta / 2 = 500. Channel counts need not match, so no
adapter is needed. Any feature maps of student and teachers pair up by position in the two
lists of layer names. The teacher's map is resized to the student's spatial size before the
attention is taken. Averaged over teachers.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from keras_endokd.distill.base import DistillationTerm, resize_like, teacher_mean, weighted_mean
from keras_endokd.models.taps import FEATURE_TAPS, LOGITS


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
    """Attention transfer over pairs of layers (default: `feat_1..3` of both); `loss_attention`.

    Arguments:
      student_layer_names: the student's feature maps, shallow to deep.
      teacher_layer_names: the teachers' maps paired with them (default: the same names).

    Example:

    ```python
    at = AttentionTransfer(student_layer_names=["block3_out"], teacher_layer_names=["conv4_block6_out"])
    ```
    """

    def __init__(self, student_layer_names: Sequence[str] = FEATURE_TAPS,
                 teacher_layer_names: Optional[Sequence[str]] = None, **kwargs):
        super().__init__(**kwargs)
        student = _names(student_layer_names, "student_layer_names")
        teacher = student if teacher_layer_names is None else _names(teacher_layer_names, "teacher_layer_names")
        if len(teacher) != len(student):
            raise ValueError(f"AttentionTransfer pairs layers: {len(student)} student_layer_names "
                             f"{list(student)} and {len(teacher)} teacher_layer_names {list(teacher)}.")
        self.student_taps, self.teacher_taps = student, teacher

    @classmethod
    def default_loss_weights(cls):
        # beta / 2 with the paper's beta = 1000: normalized maps make each tap's raw loss ~1e-3.
        return {"loss_attention": 500.0}

    def compute_terms(self, teacher_outputs, student_outputs, labels=None, training=True, sample_weight=None):
        pairs = list(zip(self.student_taps, self.teacher_taps))
        per_teacher = [
            keras.ops.sum(keras.ops.stack(
                [attention_transfer_loss(student_outputs[s], t[tt], sample_weight) for s, tt in pairs]))
            for t in teacher_outputs
        ]
        return {"loss_attention": teacher_mean(per_teacher)}

    def get_config(self):
        return {**super().get_config(), "student_layer_names": list(self.student_taps),
                "teacher_layer_names": list(self.teacher_taps)}


def _names(names, argument: str) -> tuple:
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names or not all(isinstance(n, str) and n and n != LOGITS for n in names):
        raise ValueError(f"AttentionTransfer's {argument} must be one or more feature layer names, "
                         f"got {list(names)}.")
    return names
