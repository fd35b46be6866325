"""Relation-based KD: the student preserves the teachers' distances and angles between samples.

Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation". On embeddings e (one row per
sample of the batch):

    distance:  psi_D(i, j)    = ||e_i - e_j|| / mu,  mu = mean distance over pairs i != j
               L_D = mean huber( psi_D^s(i, j), psi_D^t(i, j) )
    angle:     psi_A(i, j, k) = < (e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j|| >
               L_A = mean huber( psi_A^s, psi_A^t )
    L = lambda_D * L_D + lambda_A * L_A,   lambda_D = 25, lambda_A = 50 (the paper's and mdistiller's)

Relations, not coordinates, are matched, so the student's embedding width need not equal the
teacher's. `RelationalDistillation` applies it to a pooled feature map (the last one by default;
a vector layer is used as it is) against each teacher; `fusion_distillation.FusionDistillation`
applies it against the fused teacher target.
"""

from __future__ import annotations

import math
from typing import Optional

import keras

from keras_endokd.distill.base import DistillationTerm, teacher_mean


def _huber(a, b, delta: float = 1.0, weights=None):
    """Mean Huber loss; `weights` (broadcast to a's shape) weigh each entry: sum(W h) / size."""
    d = keras.ops.abs(a - b)
    h = keras.ops.where(d < delta, 0.5 * d**2 / delta, d - 0.5 * delta)
    return keras.ops.mean(h if weights is None else h * weights)


def _sample_weight(sample_weight, dtype):
    return None if sample_weight is None else keras.ops.reshape(keras.ops.cast(sample_weight, dtype), (-1,))


def pairwise_distances(e):
    """[B, D] -> [B, B] Euclidean distances (0 on the diagonal, safe gradient)."""
    sq = keras.ops.sum(keras.ops.square(e), axis=-1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * keras.ops.matmul(e, keras.ops.transpose(e))
    return keras.ops.sqrt(keras.ops.maximum(d2, 1e-12))


def rkd_distance_loss(student_embeddings, teacher_embeddings, sample_weight=None):
    """L_D; with per-sample weights w, the pair (i, j) weighs w_i w_j."""
    b = keras.ops.shape(student_embeddings)[0]
    off_diagonal = 1.0 - keras.ops.eye(b, dtype=student_embeddings.dtype)

    def normalized(e):
        d = pairwise_distances(e) * off_diagonal
        mu = keras.ops.sum(d) / keras.ops.maximum(keras.ops.sum(off_diagonal), 1.0)
        return d / (mu + 1e-8)

    w = _sample_weight(sample_weight, student_embeddings.dtype)
    weights = None if w is None else w[:, None] * w[None, :]
    return _huber(normalized(student_embeddings), normalized(teacher_embeddings), weights=weights)


def rkd_angle_loss(student_embeddings, teacher_embeddings, sample_weight=None):
    """L_A; with per-sample weights w, the triple (i, j, k) weighs w_i w_j w_k."""
    def angles(e):
        diff = e[:, None, :] - e[None, :, :]  # [B, B, D]: e_i - e_j
        diff = diff / (keras.ops.norm(diff, axis=-1, keepdims=True) + 1e-8)
        return keras.ops.einsum("ijd,kjd->ijk", diff, diff)

    w = _sample_weight(sample_weight, student_embeddings.dtype)
    weights = None if w is None else w[:, None, None] * w[None, :, None] * w[None, None, :]
    return _huber(angles(student_embeddings), angles(teacher_embeddings), weights=weights)


# Park et al.'s lambda_D and lambda_A, as their code and mdistiller's RKD use them (CE weight 1).
DISTANCE_WEIGHT, ANGLE_WEIGHT = 25.0, 50.0


def rkd_loss(student_embeddings, teacher_embeddings, distance_weight: float = DISTANCE_WEIGHT,
             angle_weight: float = ANGLE_WEIGHT, sample_weight=None):
    """Park et al.'s combination: lambda_D * L_D + lambda_A * L_A (25 and 50 in the paper)."""
    return distance_weight * rkd_distance_loss(student_embeddings, teacher_embeddings, sample_weight) + (
        angle_weight * rkd_angle_loss(student_embeddings, teacher_embeddings, sample_weight))


def pooled(features):
    """[B, H, W, C] -> [B, C], the global average."""
    return keras.ops.mean(features, axis=(1, 2))


def embedding(x):
    """One row per sample: a feature map [B, H, W, C] pooled, anything else flattened."""
    return pooled(x) if len(x.shape) == 4 else keras.ops.reshape(x, (-1, math.prod(x.shape[1:])))


@keras.saving.register_keras_serializable(package="keras_endokd")
class RelationalDistillation(DistillationTerm):
    """RKD on globally pooled features, against each teacher (averaged); term `loss_rkd`.

    Arguments:
      student_layer_name: the student's feature map (default `feat_3`), or `logits`.
      teacher_layer_name: each teacher's (default: the student's name).

    Example:

    ```python
    rkd = RelationalDistillation(student_layer_name="block3_out", teacher_layer_name="avg_pool")
    ```
    """

    def __init__(self, student_layer_name: str = "feat_3", teacher_layer_name: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        teacher_layer_name = student_layer_name if teacher_layer_name is None else teacher_layer_name
        for name in (student_layer_name, teacher_layer_name):
            if not isinstance(name, str) or not name:
                raise ValueError(f"RKD reads one layer of each model: give its name, got {name!r}.")
        self.student_taps, self.teacher_taps = (student_layer_name,), (teacher_layer_name,)

    @classmethod
    def default_loss_weights(cls):
        return {"loss_rkd": 1.0}

    def compute_terms(self, teacher_outputs, student_outputs, labels=None, training=True, sample_weight=None):
        s = embedding(student_outputs[self.student_taps[0]])
        per_teacher = [rkd_loss(s, embedding(t[self.teacher_taps[0]]), sample_weight=sample_weight)
                       for t in teacher_outputs]
        return {"loss_rkd": teacher_mean(per_teacher)}

    def get_config(self):
        return {**super().get_config(), "student_layer_name": self.student_taps[0],
                "teacher_layer_name": self.teacher_taps[0]}
