"""Fusing several teachers' feature maps into one guidance target.

Three ways, selected by `mode` (the train command's `--fusion`):

- `attention` (this project's headline, after Gammulle et al. 2023, "Learning Through Guidance"):
  each teacher's map is projected to a common width D (1x1 convolution) and resized to the
  student's grid; at every position, a `keras.layers.MultiHeadAttention` takes the student's
  feature there as the query and the K teachers' projected features there as keys and values:
  the student asks, position by position, which teacher to listen to. Output [B, h, w, D].
- `mean` (AVER): the plain average of the projected teacher maps.
- `confidence` (CA-MKD, Zhang, Chen & Wang 2022, "Confidence-Aware Multi-Teacher Knowledge
  Distillation"): per sample, teacher k gets w_k = (1 - softmax_k(CE_k)) / (K - 1), where CE_k is
  its cross-entropy on the true label: teachers that predict the label well count more.

The query is the student's feature with its gradient stopped: the fusion learns to answer the
student, and the student learns only from the matching loss (see `relation.py`), so it cannot
pull the target towards itself.
"""

from __future__ import annotations

import keras

from keras_endokd.distill.base import resize_like

FUSION_MODES = ("attention", "mean", "confidence")


@keras.saving.register_keras_serializable(package="keras_endokd")
class TeacherFusion(keras.layers.Layer):
    """Projects K teacher maps to `width` channels on the student's grid and fuses them.

    `call(teacher_features, student_features, teacher_logits=None, labels=None)` returns the fused
    map [B, h, w, width]; after an `attention` call, `last_attention_scores` holds the attention
    over teachers [B, h*w, heads, 1, K] for inspection.

    The attention runs on [B, h*w, tokens, channels] with `attention_axes=(2,)`: positions are a
    batch axis, the K teachers the attended one. Folding positions into the batch instead
    ([B*h*w, tokens, channels]) computes the same numbers, but Keras' TensorFlow backend then
    turns the projections into broadcast batch matmuls whose kernel gradients materialize one
    copy per sequence: measured 3x slower (32 ms vs 10 ms per step at 8x8x3x64, batch 32).
    """

    def __init__(self, mode: str = "attention", width: int = 64, num_heads: int = 4, **kwargs):
        super().__init__(**kwargs)
        if mode not in FUSION_MODES:
            raise ValueError(f"Unknown fusion {mode!r}; expected one of {FUSION_MODES}.")
        if width % num_heads:
            raise ValueError(f"width ({width}) must be divisible by num_heads ({num_heads}).")
        self.mode, self.width, self.num_heads = mode, int(width), int(num_heads)
        self.projections = []
        self.attention = None
        self.last_attention_scores = None

    def build_for(self, student_shape, teacher_shapes):
        for i, shape in enumerate(teacher_shapes):
            projection = keras.layers.Conv2D(self.width, 1, name=f"teacher_projection_{i}")
            projection.build(shape)
            self.projections.append(projection)
        if self.mode == "attention":
            self.attention = keras.layers.MultiHeadAttention(
                num_heads=self.num_heads,
                key_dim=self.width // self.num_heads,
                output_shape=self.width,
                attention_axes=(2,),
                name="teacher_attention",
            )
            k = len(teacher_shapes)
            self.attention.build(
                query_shape=(None, None, 1, student_shape[-1]),
                value_shape=(None, None, k, self.width),
            )
        self.built = True

    def call(self, teacher_features, student_features, teacher_logits=None, labels=None):
        height, width = student_features.shape[1], student_features.shape[2]
        projected = [
            resize_like(proj(t), height, width) for proj, t in zip(self.projections, teacher_features)
        ]
        stacked = keras.ops.stack(projected, axis=3)  # [B, h, w, K, D]
        if self.mode == "attention":
            return self._attend(stacked, keras.ops.stop_gradient(student_features))
        if self.mode == "confidence" and labels is not None and teacher_logits is not None:
            weights = confidence_weights(teacher_logits, labels)  # [B, K]
            return keras.ops.sum(stacked * weights[:, None, None, :, None], axis=3)
        return keras.ops.mean(stacked, axis=3)

    def teacher_weights(self, teacher_logits=None, labels=None):
        """Per sample, how much each teacher counts [B, K] (rows sum to 1), from the last call.

        `attention`: the attention over teachers of the last call, averaged over positions and
        heads; `confidence`: CA-MKD's weights; `mean`: 1/K each.
        """
        if self.mode == "attention":
            return keras.ops.mean(self.last_attention_scores[:, :, :, 0, :], axis=(1, 2))
        if self.mode == "confidence" and labels is not None and teacher_logits is not None:
            return confidence_weights(teacher_logits, labels)
        k = len(self.projections)
        return keras.ops.full((keras.ops.shape(teacher_logits[0])[0], k), 1.0 / k)

    def _attend(self, stacked, query):
        b = keras.ops.shape(query)[0]
        h, w, k, d = stacked.shape[1], stacked.shape[2], stacked.shape[3], stacked.shape[4]
        q = keras.ops.reshape(query, (-1, h * w, 1, query.shape[-1]))  # one query per position
        kv = keras.ops.reshape(stacked, (-1, h * w, k, d))  # K teacher tokens per position
        fused, scores = self.attention(q, kv, kv, return_attention_scores=True)
        self.last_attention_scores = scores
        return keras.ops.reshape(fused, (b, h, w, d))

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "width": self.width, "num_heads": self.num_heads}


def confidence_weights(teacher_logits, labels):
    """CA-MKD weights [B, K]: (1 - softmax over teachers of each one's CE) / (K - 1); sum to 1."""
    ce = keras.ops.stack(
        [
            keras.losses.sparse_categorical_crossentropy(labels, z, from_logits=True)
            for z in teacher_logits
        ],
        axis=-1,
    )
    k = ce.shape[-1]
    if k == 1:
        return keras.ops.ones_like(ce)
    return (1.0 - keras.ops.softmax(ce, axis=-1)) / (k - 1)
