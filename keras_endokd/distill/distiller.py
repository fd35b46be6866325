"""`Distiller`: one Keras model that trains a student from one or more frozen teachers.

Follows `keras.distillation.Distiller` (Keras >= 3.12): a `keras.Model` that overrides
`compute_loss`, whose `call`, `evaluate` and `predict` are the student's, and whose student saves
on its own. It differs where multi-teacher distillation needs it:

- several teachers, each run at most once per step, in inference mode, outside the gradient;
- the student also runs once per step: `call` reads its logits AND the feature taps the losses
  need from one forward pass (Keras' Distiller runs the student a second time for features);
- losses are Keras layers (`DistillationTerm`) with trainable parts (adapters, the attention
  fusion) that train with the student and are built in `__init__`, before the first step, as
  `tf.distribute` requires;
- teacher outputs may arrive precomputed with the batch (`x = {"image": ..., "teachers": (...)}`),
  so a cache can replace the teachers entirely;
- the total loss is `student_loss_weight * CE + sum_i w_i * term_i` (Keras mixes CE and
  distillation as a convex combination), each term reported as a metric (`loss_ce`,
  `loss_response`, ...), in the progress bar and the history;
- `sample_weight` and `class_weight` reach every term, not only the cross-entropy.
"""

from __future__ import annotations

import types
from typing import List, Sequence

import keras

from keras_endokd.distill.base import DistillationTerm
from keras_endokd.distribute import multi_worker
from keras_endokd.models.taps import LOGITS, tap_model

IMAGE_KEY = "image"
TEACHERS_KEY = "teachers"


def _num_replicas() -> int:
    """Replicas in sync: Keras divides compiled losses by it under tf.distribute; so do we."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    return 1


@keras.saving.register_keras_serializable(package="keras_endokd")
class Distiller(keras.Model):
    """Trains `student` from frozen `teachers` with distillation `losses` plus cross-entropy.

    Args:
      student: functional model, raw RGB pixels -> logits, exposing the taps the losses read.
      teachers: frozen functional models with the same input and class count.
      losses: `DistillationTerm`s (see `keras_endokd.distill.registry.build_losses`); empty
        trains the student alone.
      student_loss_weight: weight of the student's cross-entropy on the labels.
    """

    def __init__(
        self,
        student: keras.Model,
        teachers: Sequence[keras.Model] = (),
        losses: Sequence[DistillationTerm] = (),
        student_loss_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.student = student
        self.teachers = list(teachers)
        self.distillation_losses = list(losses)
        self.student_loss_weight = float(student_loss_weight)
        if self.distillation_losses and not self.teachers:
            raise ValueError("Distillation losses were given but no teacher.")
        for teacher in self.teachers:
            teacher.trainable = False
            self._check_compatible(teacher)
        student_taps = {LOGITS}.union(*(set(l.student_taps) for l in self.distillation_losses))
        teacher_taps = set().union(*(set(l.teacher_taps) for l in self.distillation_losses))
        # Held outside Keras' tracking: they share the student's/teachers' layers and variables,
        # and must not be saved or counted a second time.
        self._graphs = types.SimpleNamespace(
            student=tap_model(student, sorted(student_taps)),
            teachers=[tap_model(t, sorted(teacher_taps)) for t in self.teachers] if teacher_taps else [],
            student_outputs=None,
            training_trace=True,
        )
        k = len(self.teachers)
        names = ["loss_ce"] + [n for l in self.distillation_losses for n in (*l.loss_names, *l.monitor_names(k))]
        duplicated = {n for n in names if names.count(n) > 1}
        if duplicated:
            raise ValueError(f"Two losses report the same term(s) {sorted(duplicated)}.")
        self.term_trackers = [keras.metrics.Mean(name=n) for n in names]
        self.build(student.input.shape)

    def objective(self) -> str:
        """The resolved total loss, e.g. `1*CE + 1*relation + 1*relation_rkd + 1*fusion_ce`."""
        terms = [f"{self.student_loss_weight:g}*CE"] + [
            f"{loss.loss_weights[n]:g}*{n[len('loss_'):]}" for loss in self.distillation_losses for n in loss.loss_names
        ]
        return " + ".join(terms)

    @property
    def teacher_tap_models(self) -> List[keras.Model]:
        """Per teacher, the model returning the {tap: tensor} the losses read (for caching)."""
        return list(self._graphs.teachers)

    @property
    def teacher_taps(self) -> List[str]:
        """The teacher outputs a batch must carry when teachers' outputs come precomputed."""
        return list(self._graphs.teachers[0].output) if self._graphs.teachers else []

    def _check_compatible(self, teacher):
        if tuple(teacher.input.shape[1:]) != tuple(self.student.input.shape[1:]):
            raise ValueError(
                f"Teacher '{teacher.name}' takes inputs {teacher.input.shape[1:]}, the student "
                f"{self.student.input.shape[1:]}: they must see the same images."
            )
        if teacher.output.shape[-1] != self.student.output.shape[-1]:
            raise ValueError(
                f"Teacher '{teacher.name}' predicts {teacher.output.shape[-1]} classes, the "
                f"student {self.student.output.shape[-1]}."
            )

    def build(self, input_shape=None):
        """Creates every adapter's and the fusion's variables from the models' tap shapes."""
        student_shapes = {k: tuple(v.shape) for k, v in self._graphs.student.output.items()}
        teacher_shapes = [
            {k: tuple(v.shape) for k, v in g.output.items()} for g in self._graphs.teachers
        ]
        num_classes = self.student.output.shape[-1]
        for loss in self.distillation_losses:
            if not loss.built:
                loss.build_for(student_shapes, teacher_shapes, num_classes)
        self.built = True

    def call(self, inputs, training=None):
        image = inputs[IMAGE_KEY] if isinstance(inputs, dict) else inputs
        outputs = self._graphs.student(image, training=training)
        # Handed to `compute_loss` of the same step, so the student runs once per step.
        self._graphs.student_outputs = outputs
        return outputs[LOGITS]

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """As `keras.Model.compile`; the student loss defaults to sparse CE on logits."""
        if loss is None:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        """Restores `compile` on load (Keras skips it for models that override `compile`)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def teacher_outputs(self, x) -> List[dict]:
        """One {tap: tensor} per teacher: from the batch when precomputed, else run once each."""
        if isinstance(x, dict) and TEACHERS_KEY in x:
            return [dict(t) for t in x[TEACHERS_KEY]]
        image = x[IMAGE_KEY] if isinstance(x, dict) else x
        return [
            {k: keras.ops.stop_gradient(v) for k, v in g(image, training=False).items()}
            for g in self._graphs.teachers
        ]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        student_outputs = self._graphs.student_outputs
        if student_outputs is None or student_outputs[LOGITS] is not y_pred:
            image = x[IMAGE_KEY] if isinstance(x, dict) else x
            student_outputs = self._graphs.student(image, training=training)
        ce = super().compute_loss(x, y, y_pred, sample_weight, training)
        trackers = {m.name: m for m in self.term_trackers}
        replicas = _num_replicas()
        trackers["loss_ce"].update_state(ce * replicas)
        total = self.student_loss_weight * ce
        self._graphs.training_trace = bool(training)
        if not training or not self.distillation_losses:
            return total
        teacher_outputs = self.teacher_outputs(x)
        labels = None if y is None else keras.ops.cast(y, "int32")
        for loss in self.distillation_losses:
            terms = loss.compute_loss(teacher_outputs, student_outputs, labels=labels, training=True,
                                      sample_weight=sample_weight)
            for name, value in terms.items():
                trackers[name].update_state(value)
                if name in loss.loss_weights:  # the rest are monitors
                    total = total + loss.loss_weights[name] * value / replicas
        return total

    # Keras 3 and `MultiWorkerMirroredStrategy` (keras-team/keras#20585): `fit` first reduces a
    # data batch across workers in eager mode (fails), and each step reduces the scalar logs
    # with `axis=0` (fails). The Distiller is built in `__init__`, so the first is skipped; the
    # logs are given a leading axis of one, which that reduction averages away.
    def _multi_worker(self) -> bool:
        return keras.backend.backend() == "tensorflow" and multi_worker(self.distribute_strategy)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._multi_worker():
            return None
        if keras.backend.backend() == "tensorflow" and self._distribute_strategy is None:
            # Without a strategy Keras leaves the optimizer's and metrics' variables to the first
            # step, and a `tf.function` that creates variables is traced twice (measured: ~4 s
            # more per `fit`, the largest fixed cost of a short run). Keras' own build from the
            # first batch's shapes, as it does under a strategy, creates them before tracing
            # (it reads a batch only when something is left to build).
            return self._symbolic_build(iterator=iterator, data_batch=data_batch)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        return self._reducible(super().train_step(data))

    def test_step(self, data):
        return self._reducible(super().test_step(data))

    def _reducible(self, logs):
        if self._multi_worker():
            return {k: keras.ops.reshape(v, (1,)) for k, v in logs.items()}
        return logs

    def get_metrics_result(self):
        """Validation logs carry only the student's terms: distillation runs in training only.

        `training_trace` is a Python flag set while `compute_loss` is traced, so each compiled
        step (train or test) bakes in its own choice.
        """
        results = super().get_metrics_result()
        if not self._graphs.training_trace:
            for tracker in self.term_trackers[1:]:
                results.pop(tracker.name, None)
        return results

    def get_config(self):
        return {
            **super().get_config(),
            "student": keras.saving.serialize_keras_object(self.student),
            "teachers": [keras.saving.serialize_keras_object(t) for t in self.teachers],
            "losses": [keras.saving.serialize_keras_object(l) for l in self.distillation_losses],
            "student_loss_weight": self.student_loss_weight,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["teachers"] = [keras.saving.deserialize_keras_object(t) for t in config["teachers"]]
        config["losses"] = [keras.saving.deserialize_keras_object(l) for l in config["losses"]]
        return cls(**config)

