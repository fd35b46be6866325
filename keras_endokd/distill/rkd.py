"""Relation-based KD: the student preserves the teachers' distances and angles between samples.

Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation". On embeddings e (one row per
sample of the batch):

    distance:  psi_D(i, j)    = ||e_i - e_j|| / mu,  mu = mean distance over pairs i != j
               L_D = mean huber( psi_D^s(i, j), psi_D^t(i, j) )
    angle:     psi_A(i, j, k) = < (e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j|| >
               L_A = mean huber( psi_A^s, psi_A^t )
    L = lambda_D * L_D + lambda_A * L_A,   lambda_D = 25, lambda_A = 50 (the paper's and mdistiller's)

Relations, not coordinates, are matched, so the student's embedding width need not equal the
teacher's. `RelationalDistillation` applies it to the pooled last feature map against each
teacher; `relation.FusionDistillation` applies it against the fused teacher target.
"""

from __future__ import annotations

import keras

from keras_endokd.distill.base import DistillationTerm, teacher_mean
from keras_endokd.models.taps import FEATURE_TAPS


def _huber(a, b, delta: float = 1.0):
    d = keras.ops.abs(a - b)
    return keras.ops.mean(keras.ops.where(d < delta, 0.5 * d**2 / delta, d - 0.5 * delta))


def pairwise_distances(e):
    """[B, D] -> [B, B] Euclidean distances (0 on the diagonal, safe gradient)."""
    sq = keras.ops.sum(keras.ops.square(e), axis=-1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * keras.ops.matmul(e, keras.ops.transpose(e))
    return keras.ops.sqrt(keras.ops.maximum(d2, 1e-12))


def rkd_distance_loss(student_embeddings, teacher_embeddings):
    b = keras.ops.shape(student_embeddings)[0]
    off_diagonal = 1.0 - keras.ops.eye(b, dtype=student_embeddings.dtype)

    def normalized(e):
        d = pairwise_distances(e) * off_diagonal
        mu = keras.ops.sum(d) / keras.ops.maximum(keras.ops.sum(off_diagonal), 1.0)
        return d / (mu + 1e-8)

    return _huber(normalized(student_embeddings), normalized(teacher_embeddings))


def rkd_angle_loss(student_embeddings, teacher_embeddings):
    def angles(e):
        diff = e[:, None, :] - e[None, :, :]  # [B, B, D]: e_i - e_j
        diff = diff / (keras.ops.norm(diff, axis=-1, keepdims=True) + 1e-8)
        return keras.ops.einsum("ijd,kjd->ijk", diff, diff)

    return _huber(angles(student_embeddings), angles(teacher_embeddings))


# Park et al.'s lambda_D and lambda_A, as their code and mdistiller's RKD use them (CE weight 1).
DISTANCE_WEIGHT, ANGLE_WEIGHT = 25.0, 50.0


def rkd_loss(student_embeddings, teacher_embeddings, distance_weight: float = DISTANCE_WEIGHT,
             angle_weight: float = ANGLE_WEIGHT):
    """Park et al.'s combination: lambda_D * L_D + lambda_A * L_A (25 and 50 in the paper)."""
    return distance_weight * rkd_distance_loss(student_embeddings, teacher_embeddings) + (
        angle_weight * rkd_angle_loss(student_embeddings, teacher_embeddings))


def pooled(features):
    return keras.ops.mean(features, axis=(1, 2))


@keras.saving.register_keras_serializable(package="keras_endokd")
class RelationalDistillation(DistillationTerm):
    """RKD on globally pooled `tap` features, against each teacher (averaged)."""

    def __init__(self, tap: str = "feat_3", **kwargs):
        super().__init__(**kwargs)
        if tap not in FEATURE_TAPS:
            raise ValueError(f"RKD tap must be one of {FEATURE_TAPS}, got {tap!r}.")
        self.tap = tap
        self.student_taps = self.teacher_taps = (tap,)

    @classmethod
    def default_loss_weights(cls):
        return {"loss_rkd": 1.0}

    def compute_loss(self, teacher_outputs, student_outputs, labels=None, training=True):
        s = pooled(student_outputs[self.tap])
        per_teacher = [rkd_loss(s, pooled(t[self.tap])) for t in teacher_outputs]
        return {"loss_rkd": teacher_mean(per_teacher)}

    def get_config(self):
        return {**super().get_config(), "tap": self.tap}
