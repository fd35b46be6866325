"""The base of every distillation loss: Keras' `DistillationLoss` contract, as a Keras layer.

`keras.distillation.DistillationLoss` (Keras >= 3.12) computes one scalar from
`compute_loss(teacher_outputs, student_outputs)`. We keep that method and its name, and extend
it where multi-teacher distillation needs more:

- it is a `keras.layers.Layer`, so trainable parts (FitNets adapters, the attention fusion) are
  tracked by the Distiller, trained with the student, built before the first step (required under
  `tf.distribute`) and saved with `get_config`;
- `teacher_outputs` is a list with one `{tap: tensor}` dict per teacher, and `student_outputs`
  is the student's `{tap: tensor}` dict, read from ONE forward pass of each model;
- it may use the labels (confidence-weighted fusion, the fusion's classification head);
- it returns a dict of named, unweighted terms (`{"loss_feature": ...}`); the Distiller weighs
  them with `loss_weights` and reports each one as a metric;
- it takes the batch's `sample_weight` [B] (Keras' `sample_weight`, or `class_weight` turned into
  one): a per-sample term is reduced as Keras reduces the cross-entropy, sum(w_i l_i) / B, so a
  rare class weighs as much in distillation as in the labels' loss (`weighted_mean`).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import keras

Outputs = Mapping[str, "keras.KerasTensor"]


class DistillationTerm(keras.layers.Layer, keras.distillation.DistillationLoss):
    """Base class: subclasses set the taps they read and implement `compute_loss`.

    Attributes:
      student_taps: student tap names read (`logits`, `feat_1`, ...).
      teacher_taps: teacher tap names read.
      loss_weights: {term name: weight} for each term `compute_loss` returns.
    """

    student_taps: Sequence[str] = ()
    teacher_taps: Sequence[str] = ()

    def __init__(self, loss_weights: Optional[Dict[str, float]] = None, **kwargs):
        super().__init__(**kwargs)
        weights = dict(self.default_loss_weights())
        unknown = set(loss_weights or {}) - set(weights)
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no term(s) {sorted(unknown)}; its terms are "
                f"{sorted(weights)}."
            )
        weights.update(loss_weights or {})
        self.loss_weights = weights

    @classmethod
    def default_loss_weights(cls) -> Dict[str, float]:
        raise NotImplementedError

    @property
    def loss_names(self) -> List[str]:
        return list(self.loss_weights)

    def monitor_names(self, num_teachers: int) -> List[str]:
        """Diagnostics `compute_loss` returns beside its terms: reported as metrics, not optimised."""
        return []

    def build_for(self, student_shapes: Outputs, teacher_shapes: List[Outputs], num_classes: int):
        """Creates the term's variables from the probed tap shapes (batch dimension included)."""
        self.built = True

    def compute_loss(
        self,
        teacher_outputs: List[Outputs],
        student_outputs: Outputs,
        labels=None,
        training: bool = True,
        sample_weight=None,
    ) -> Dict[str, "keras.KerasTensor"]:
        raise NotImplementedError

    def get_config(self):
        return {**super().get_config(), "loss_weights": dict(self.loss_weights)}


def weighted_mean(per_sample, sample_weight=None):
    """Batch reduction of a per-sample loss [B]: mean(l), or sum(w * l) / B with weights w [B]
    (Keras' `sum_over_batch_size`, as for the cross-entropy)."""
    if sample_weight is None:
        return keras.ops.mean(per_sample)
    w = keras.ops.reshape(keras.ops.cast(sample_weight, per_sample.dtype), (-1,))
    return keras.ops.mean(per_sample * w)


def teacher_mean(values: Sequence, mixing_weights: Optional[Sequence[float]] = None):
    """Mean of per-teacher scalars, optionally weighted (weights are normalized to sum to 1)."""
    if mixing_weights is None:
        return keras.ops.mean(keras.ops.stack(values))
    if len(mixing_weights) != len(values):
        raise ValueError(
            f"{len(mixing_weights)} mixing weights given for {len(values)} teachers."
        )
    w = keras.ops.convert_to_tensor(mixing_weights, dtype=values[0].dtype)
    return keras.ops.sum(keras.ops.stack(values) * w) / keras.ops.sum(w)


def resize_like(x, height: int, width: int):
    """Resizes a feature map [B, h, w, C] to [B, height, width, C] (area-like when shrinking)."""
    if tuple(x.shape[1:3]) == (height, width):
        return x
    if x.shape[1] % height == 0 and x.shape[2] % width == 0:
        pool = (x.shape[1] // height, x.shape[2] // width)
        return keras.ops.average_pool(x, pool, strides=pool, padding="valid")
    return keras.ops.image.resize(x, (height, width), interpolation="bilinear")
