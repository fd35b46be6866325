"""The Distiller's arguments, as `keras.distillation.Distiller` names them, checked at once.

Keyword arguments only: `Distiller(teacher=..., student=..., distillation_losses=[...])`, as
Keras documents it (several teachers: `teachers=[...]`). A positional call, a misnamed keyword
(`losses=`, `teacher_model=`) or a value that cannot work is refused before anything is built,
with an error naming the argument to use.
"""

from __future__ import annotations

import difflib
import math
from typing import List, Tuple

import keras

ARGUMENTS = ("teacher", "teachers", "student", "distillation_losses", "distillation_loss_weights",
             "student_loss_weight", "name")
# What keras.Model passes on to keras.layers.Layer.
MODEL_KEYWORDS = ("trainable", "dtype", "autocast")
# Names seen in other distillation code (Keras' older example, torchdistill, mdistiller).
MISNAMED = {
    "losses": "distillation_losses", "distillation_loss": "distillation_losses", "loss": "distillation_losses",
    "loss_weights": "distillation_loss_weights", "teacher_model": "teacher", "teacher_models": "teachers",
    "student_model": "student", "alpha": "student_loss_weight", "ce_weight": "student_loss_weight",
}
USAGE = ("Distiller(teacher=..., student=..., distillation_losses=[...], distillation_loss_weights=[...], "
         "student_loss_weight=0.5), or teachers=[...] for several teachers")


def check_keywords(args: tuple, kwargs: dict) -> dict:
    """The keyword arguments meant for keras.Model; raises TypeError for anything else."""
    if args:
        raise TypeError(
            f"Distiller takes keyword arguments only, got {len(args)} positional one(s): {USAGE}."
        )
    unknown = [k for k in kwargs if k not in MODEL_KEYWORDS]
    if unknown:
        key = unknown[0]
        if key in ("temperature",):
            hint = ("the temperature belongs to the loss: ResponseDistillation(temperature=...) or "
                    "keras.distillation.LogitsDistillation(temperature=...)")
        else:
            right = MISNAMED.get(key) or next(iter(difflib.get_close_matches(key, ARGUMENTS, n=1)), None)
            hint = f"did you mean {right}=?" if right else f"the arguments are {', '.join(ARGUMENTS)}"
        raise TypeError(f"Distiller got an unexpected keyword argument {key}=: {hint} ({USAGE}).")
    return kwargs


def resolve(teacher, teachers, student, distillation_losses, distillation_loss_weights,
            student_loss_weight) -> Tuple[List[keras.Model], list, List[float], float]:
    """(teachers, losses, loss weights, student loss weight), checked as Keras checks them."""
    _model(student, "student")
    if teacher is not None and teachers is not None:
        raise ValueError("Distiller got both teacher= and teachers=: give one model as teacher=, or "
                         "several as teachers=[...].")
    if teacher is not None:
        if isinstance(teacher, (list, tuple)):
            raise ValueError(f"teacher= takes one keras.Model; give {len(teacher)} as teachers=[...].")
        teachers = [_model(teacher, "teacher")]
    elif isinstance(teachers, keras.Model):
        teachers = [teachers]
    else:
        teachers = [_model(t, f"teachers[{i}]") for i, t in enumerate(teachers or [])]
    if distillation_losses is None:
        losses = []
    elif isinstance(distillation_losses, (list, tuple)):
        losses = list(distillation_losses)
    else:
        losses = [distillation_losses]
    if losses and not teachers:
        raise ValueError("Distillation losses were given but no teacher: give teacher= or teachers=[...].")
    if distillation_loss_weights is None:
        weights = [1.0] * len(losses)
    else:
        weights = list(distillation_loss_weights)
        if len(weights) != len(losses):
            raise ValueError(f"Number of distillation_loss_weights ({len(weights)}) must match number of "
                             f"distillation_losses ({len(losses)}).")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"distillation_loss_weights must be numbers >= 0, got {weights}.")
    if isinstance(student_loss_weight, bool) or not isinstance(student_loss_weight, (int, float)):
        raise ValueError(f"student_loss_weight must be a number, got {type(student_loss_weight).__name__}.")
    if not 0.0 <= student_loss_weight <= 1.0:
        raise ValueError(
            f"student_loss_weight must be between 0.0 and 1.0, got {student_loss_weight}: the total is "
            f"w * student_loss + (1 - w) * distillation_loss, as in keras.distillation.Distiller."
        )
    return teachers, losses, weights, student_loss_weight


def _model(model, role: str) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise ValueError(f"{role} must be a keras.Model, got {type(model).__name__}: {model!r:.80}.")
    return model
