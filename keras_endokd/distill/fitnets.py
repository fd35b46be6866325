"""Feature-based KD with hints: the student's features, through a learned adapter, regress the
teachers' features.

Romero et al. 2015, "FitNets: Hints for Thin Deep Nets":

    L = mean || r(F_s) - resize(F_t) ||^2

where r is a trainable 1x1 convolution (one per teacher) mapping the student's C_s channels to
the teacher's C_t, and the teacher map is pooled (or bilinearly resized) to the student's spatial
size. The adapter is trained with the student and discarded after distillation, so the deployed
student is unchanged. Averaged over teachers.
"""

from __future__ import annotations

import keras

from keras_endokd.distill.base import DistillationTerm, resize_like, teacher_mean, weighted_mean
from keras_endokd.models.taps import LOGITS


@keras.saving.register_keras_serializable(package="keras_endokd")
class FitNetsDistillation(DistillationTerm):
    """Hint loss between a student layer and the same layer of each teacher; term `loss_feature`.

    Arguments:
      student_layer_name: the student's feature map [B, h, w, C_s] (default `feat_2`).
      teacher_layer_name: each teacher's feature map [B, H, W, C_t] (default `feat_2`).

    Example:

    ```python
    hint = FitNetsDistillation(student_layer_name="block2_out", teacher_layer_name="conv3_block4_out")
    ```
    """

    def __init__(self, student_layer_name: str = "feat_2", teacher_layer_name: str = "feat_2", **kwargs):
        super().__init__(**kwargs)
        for name in (student_layer_name, teacher_layer_name):
            if not isinstance(name, str) or not name or name == LOGITS:
                raise ValueError(f"FitNets reads a feature map: give a layer name, got {name!r}.")
        self.student_taps, self.teacher_taps = (student_layer_name,), (teacher_layer_name,)
        self.adapters = []

    @classmethod
    def default_loss_weights(cls):
        return {"loss_feature": 1.0}

    def build_for(self, student_shapes, teacher_shapes, num_classes):
        for i, shapes in enumerate(teacher_shapes):
            adapter = keras.layers.Conv2D(shapes[self.teacher_layer_name][-1], 1, name=f"hint_adapter_{i}")
            adapter.build(student_shapes[self.student_layer_name])
            self.adapters.append(adapter)
        self.built = True

    def compute_terms(self, teacher_outputs, student_outputs, labels=None, training=True, sample_weight=None):
        s = student_outputs[self.student_layer_name]
        height, width = s.shape[1], s.shape[2]
        if len(self.adapters) != len(teacher_outputs):
            raise ValueError(f"FitNetsDistillation was built with {len(self.adapters)} teacher adapter(s) "
                             f"and is given {len(teacher_outputs)} teacher(s).")
        per_teacher = []
        for adapter, t in zip(self.adapters, teacher_outputs):
            target = resize_like(t[self.teacher_layer_name], height, width)
            per_sample = keras.ops.mean(keras.ops.square(adapter(s) - target), axis=(1, 2, 3))
            per_teacher.append(weighted_mean(per_sample, sample_weight))
        return {"loss_feature": teacher_mean(per_teacher)}

    def get_config(self):
        return {**super().get_config(), "student_layer_name": self.student_layer_name,
                "teacher_layer_name": self.teacher_layer_name}
