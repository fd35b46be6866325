"""Response-based KD: the student matches the teachers' softened class distributions.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network":

    L = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) ),   averaged over the batch,

and, with several teachers, averaged over teachers (optionally weighted). The T^2 factor keeps
the gradient scale independent of T. Keras 3.15's `LogitsDistillation()` default
(`loss="kl_divergence"`) computes KL on raw temperature-scaled logits instead of on the
softmaxes (see shared TRAPS.md): we write the formula out.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from keras_endokd.distill.base import DistillationTerm, teacher_mean, weighted_mean
from keras_endokd.models.taps import LOGITS


def soft_kl_per_sample(teacher_logits, student_logits, temperature: float):
    """T^2 * KL(softmax(t/T) || softmax(s/T)) per sample [B], in nats."""
    t = keras.ops.log_softmax(teacher_logits / temperature, axis=-1)
    s = keras.ops.log_softmax(student_logits / temperature, axis=-1)
    return keras.ops.sum(keras.ops.exp(t) * (t - s), axis=-1) * temperature**2


def soft_kl(teacher_logits, student_logits, temperature: float):
    """T^2 * mean over the batch of KL(softmax(t/T) || softmax(s/T)), in nats."""
    return keras.ops.mean(soft_kl_per_sample(teacher_logits, student_logits, temperature))


@keras.saving.register_keras_serializable(package="keras_endokd")
class ResponseDistillation(DistillationTerm):
    """Hinton KD against every teacher's logits (their final outputs); term `loss_response`.

    Arguments:
      temperature: softening temperature T (> 0).
      mixing_weights: optional per-teacher weights (normalized); equal by default.

    Example:

    ```python
    kd = ResponseDistillation(temperature=4.0)
    kd.compute_loss(teacher_logits, student_logits)       # the scalar, as Keras' contract says
    keras.distillation.Distiller(teacher=t, student=s, distillation_losses=[kd])  # works there too
    ```
    """

    student_taps = (LOGITS,)
    teacher_taps = (LOGITS,)

    def __init__(
        self, temperature: float = 4.0, mixing_weights: Optional[Sequence[float]] = None, **kwargs
    ):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.temperature = float(temperature)
        self.mixing_weights = list(mixing_weights) if mixing_weights is not None else None

    @classmethod
    def default_loss_weights(cls):
        return {"loss_response": 1.0}

    def compute_terms(self, teacher_outputs, student_outputs, labels=None, training=True, sample_weight=None):
        per_teacher = [
            weighted_mean(soft_kl_per_sample(t[LOGITS], student_outputs[LOGITS], self.temperature), sample_weight)
            for t in teacher_outputs
        ]
        return {"loss_response": teacher_mean(per_teacher, self.mixing_weights)}

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "mixing_weights": self.mixing_weights,
        }
