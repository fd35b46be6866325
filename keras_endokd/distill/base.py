"""The base of every distillation loss: Keras' `DistillationLoss` contract, as a Keras layer.

`keras.distillation.DistillationLoss` (Keras >= 3.12) computes one scalar from
`compute_loss(teacher_outputs, student_outputs)`, given the teacher's and the student's final
outputs (logits), or the outputs of the layers it names with `teacher_layer_name` and
`student_layer_name`. Our terms keep that contract, so they also run inside
`keras.distillation.Distiller`, and extend it where multi-teacher distillation needs more:

- a term is a `keras.layers.Layer`, so trainable parts (FitNets adapters, the attention fusion)
  are tracked by the distiller, trained with the student, built before the first step (required
  under `tf.distribute`) and saved with `get_config`;
- `compute_terms(teacher_outputs, student_outputs, labels, sample_weight)` takes one
  `{layer name: tensor}` dict per teacher and the student's dict, read from ONE forward pass of
  each model (`LOGITS` is a model's final output, as logits), and returns the named, unweighted
  terms (`{"loss_feature": ...}`): `keras_endokd.Distiller` reports each one as a metric;
- `compute_loss` is their weighted sum, sum_n loss_weights[n] * term_n, one scalar, on plain
  tensors as Keras passes them (or on the dicts above);
- it may use the labels (confidence-weighted fusion, the fusion's classification head);
- it takes the batch's `sample_weight` [B] (Keras' `sample_weight`, or `class_weight` turned into
  one): a per-sample term is reduced as Keras reduces the cross-entropy, sum(w_i l_i) / B, so a
  rare class weighs as much in distillation as in the labels' loss (`weighted_mean`).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import keras

from keras_endokd.models.taps import LOGITS, check_layers, has_graph, tap_model

Outputs = Mapping[str, "keras.KerasTensor"]


class DistillationTerm(keras.layers.Layer, keras.distillation.DistillationLoss):
    """Base class: subclasses set the layers they read and implement `compute_terms`.

    Attributes:
      student_taps: the student layers read (layer names; `LOGITS` is the final output).
      teacher_taps: the teacher layers read, from every teacher.
      loss_weights: {term name: weight} of each term `compute_terms` returns.
    """

    student_taps: Sequence[str] = ()
    teacher_taps: Sequence[str] = ()
    # Terms that train the term's own layers only (not the student): what `Distiller.warm_up_terms`
    # optimises before the student starts (e.g. the fusion's classification loss).
    warmup_loss_names: Sequence[str] = ()

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
        """Diagnostics `compute_terms` returns beside its terms: reported as metrics, not optimised."""
        return []

    # `keras.distillation.Distiller` reads these two to pick the tensors it passes to
    # `compute_loss`: the one layer a term reads, or None for the final output.
    @property
    def teacher_layer_name(self) -> Optional[str]:
        return _single_layer(self.teacher_taps)

    @property
    def student_layer_name(self) -> Optional[str]:
        return _single_layer(self.student_taps)

    def build_for(self, student_shapes: Outputs, teacher_shapes: List[Outputs], num_classes: int):
        """Creates the term's variables from the probed tap shapes (batch dimension included)."""
        self.built = True

    def compute_terms(
        self,
        teacher_outputs: List[Outputs],
        student_outputs: Outputs,
        labels=None,
        training: bool = True,
        sample_weight=None,
    ) -> Dict[str, "keras.KerasTensor"]:
        """{term name: unweighted value} (and the monitors), from tap dicts."""
        raise NotImplementedError

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        """sum_n loss_weights[n] * term_n, a scalar: Keras' `DistillationLoss.compute_loss`.

        Args:
          teacher_outputs: the teacher's tensor (its logits, or the output of the one layer the
            term reads), a list of such tensors (one per teacher), a `{layer: tensor}` dict or a
            list of dicts.
          student_outputs: the student's tensor, or its `{layer: tensor}` dict.
          **kwargs: `labels`, `sample_weight` and `training`, passed on to `compute_terms`.
        """
        teachers, student = self._as_tap_dicts(teacher_outputs, student_outputs)
        if not self.built:
            logits = student.get(LOGITS)
            self.build_for(_shapes(student), [_shapes(t) for t in teachers],
                           None if logits is None else logits.shape[-1])
        terms = self.compute_terms(teachers, student, **kwargs)
        return sum(w * terms[n] for n, w in self.loss_weights.items())

    def _as_tap_dicts(self, teacher_outputs, student_outputs):
        def one(outputs, taps, role):
            if isinstance(outputs, Mapping):
                return dict(outputs)
            if len(taps) != 1:
                raise ValueError(
                    f"{type(self).__name__} reads {len(taps)} layers of the {role} {list(taps)}: "
                    f"pass them as a {{layer name: tensor}} dict, or use keras_endokd.Distiller, "
                    f"which reads them all from one forward pass."
                )
            return {taps[0]: outputs}

        many = isinstance(teacher_outputs, (list, tuple))
        teachers = [one(t, self.teacher_taps, "teacher") for t in (teacher_outputs if many else [teacher_outputs])]
        return teachers, one(student_outputs, self.student_taps, "student")

    def validate_model_compatibility(self, teacher, student):
        """Keras' hook, called by `keras.distillation.Distiller` when it is constructed: the layers
        must exist, and the term's variables are built from their shapes, before training."""
        name = type(self).__name__
        if len(self.teacher_taps) != 1 or len(self.student_taps) != 1:
            raise ValueError(
                f"{name} reads {list(self.student_taps)} of the student and {list(self.teacher_taps)} "
                f"of the teacher, but keras.distillation.Distiller passes a loss one tensor of each "
                f"model. Use keras_endokd.Distiller (same arguments), or give the term one layer."
            )
        check_layers(teacher, self.teacher_taps, "teacher", name)
        check_layers(student, self.student_taps, "student", name)
        if not self.built and has_graph(teacher) and has_graph(student):
            self.build_for(_shapes(tap_model(student, self.student_taps).output),
                           [_shapes(tap_model(teacher, self.teacher_taps).output)], student.outputs[0].shape[-1])

    def get_config(self):
        return {**super().get_config(), "loss_weights": dict(self.loss_weights)}


def _shapes(tensors: Outputs) -> Dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _single_layer(taps: Sequence[str]) -> Optional[str]:
    return taps[0] if len(taps) == 1 and taps[0] != LOGITS else None


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
