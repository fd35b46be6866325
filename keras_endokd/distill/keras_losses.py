"""Any distillation loss in one Distiller: our terms and Keras' own loss objects, side by side.

`keras_endokd.Distiller` takes two kinds of `distillation_losses`:

- our `DistillationTerm`s, which read several layers and all teachers at once and return named
  sub-terms (`compute_terms`), each reported as a metric;
- any other `keras.distillation.DistillationLoss`, e.g. Keras' `LogitsDistillation` and
  `FeatureDistillation`, run as `keras.distillation.Distiller` runs them: `compute_loss` on the
  teacher's and the student's final outputs (logits), or on the outputs of the layers their
  `teacher_layer_name` / `student_layer_name` name. With several teachers the loss is computed
  against each teacher and the results are averaged: L = (1/K) sum_k L(teacher_k, student).
  Its value is reported as `loss_<its class in snake case>` (`loss_logits_distillation`).

Keras' losses get no labels and no `sample_weight` (their contract has none): they average over
the batch unweighted, while our terms weigh each sample.
"""

from __future__ import annotations

import re
import warnings
from typing import List, Sequence, Tuple

import keras

from keras_endokd.distill.base import DistillationTerm, teacher_mean
from keras_endokd.models.taps import LOGITS, check_layers


def is_term(loss) -> bool:
    return isinstance(loss, DistillationTerm)


def loss_taps(loss) -> Tuple[tuple, tuple]:
    """(student layers, teacher layers) the loss reads; `LOGITS` is a model's final output."""
    if is_term(loss):
        return tuple(loss.student_taps), tuple(loss.teacher_taps)
    return ((getattr(loss, "student_layer_name", None) or LOGITS,),
            (getattr(loss, "teacher_layer_name", None) or LOGITS,))


def check_loss(loss, student, teachers: Sequence[keras.Model]) -> None:
    """Refuses what cannot run, before any training: not a distillation loss, a missing layer."""
    if not isinstance(loss, keras.distillation.DistillationLoss):
        raise TypeError(
            f"distillation_losses takes keras.distillation.DistillationLoss objects (ours, such as "
            f"keras_endokd.ResponseDistillation, or Keras' LogitsDistillation / FeatureDistillation), "
            f"got {type(loss).__name__}: {loss!r}."
        )
    student_taps, teacher_taps = loss_taps(loss)
    reader = type(loss).__name__
    check_layers(student, student_taps, "student", reader)
    for teacher in teachers:
        check_layers(teacher, teacher_taps, "teacher", reader)
    if is_term(loss):
        return
    for teacher in teachers:
        loss.validate_model_compatibility(teacher, student)  # Keras' own hook
    if isinstance(loss, keras.distillation.LogitsDistillation) and _raw_kl(loss.loss):
        warnings.warn(
            "keras.distillation.LogitsDistillation(loss='kl_divergence'), its default, applies "
            "keras.losses.kl_divergence to the temperature-scaled logits themselves, not to their "
            "softmaxes, and without the T^2 factor (Keras 3.12 to 3.15). For Hinton's KD pass "
            "loss=keras.losses.KLDivergence(), or use keras_endokd.ResponseDistillation.",
            stacklevel=3,
        )


def _raw_kl(loss) -> bool:
    return any(fn is keras.losses.kl_divergence for fn in keras.tree.flatten(loss))


def metric_names(losses: Sequence, num_teachers: int) -> List[List[str]]:
    """Per loss, the metric names it reports: our terms' named terms and monitors, or one name."""
    names = []
    for loss in losses:
        if is_term(loss):
            names.append([*loss.loss_names, *loss.monitor_names(num_teachers)])
        else:
            base = "loss_" + re.sub(r"(?<!^)(?=[A-Z])", "_", type(loss).__name__).lower()
            taken = {n for group in names for n in group}
            name, i = base, 1
            while name in taken:
                name, i = f"{base}_{i}", i + 1
            names.append([name])
    return names


def keras_loss_value(loss, teacher_outputs: List[dict], student_outputs: dict):
    """A Keras `DistillationLoss` against each teacher, averaged (one scalar)."""
    (student_tap,), (teacher_tap,) = loss_taps(loss)
    values = []
    for outputs in teacher_outputs:
        t, s = outputs[teacher_tap], student_outputs[student_tap]
        loss.validate_outputs(t, s)
        value = loss.compute_loss(t, s)
        if len(getattr(value, "shape", ())) > 0:
            raise ValueError(f"{type(loss).__name__}.compute_loss returned shape {value.shape}, not a scalar.")
        values.append(keras.ops.cast(value, "float32"))
    return teacher_mean(values)
