"""Relation-based KD through a fused teacher target (the project's headline method).

Gammulle et al. 2023, "Learning Through Guidance: Knowledge Distillation for Endoscopic Image
Classification": instead of averaging teachers, a multi-head attention layer fuses their feature
maps into one target that guides the student. With F = fusion(teachers | student) [B, h, w, D]
and A(S) the student's `tap` map through a trainable 1x1 adapter to width D:

    loss_relation  = mean over positions || n(A(S)) - n(sg(F)) ||^2     (n: L2 over channels)
    loss_relation_rkd = RKD(pool(A(S)), pool(sg(F)))                    (Park et al. 2019)
    loss_fusion_ce = CE(y, head(pool(F)))                               (trains the fusion only)

sg = stop-gradient. The student is pulled towards the fused target, position by position and in
its relations between samples. The fusion itself is trained only by `loss_fusion_ce`: its target
must classify the image, which keeps it from collapsing to a constant (or to the student) and
makes it carry the teachers' discriminative content. `fusion="mean"` and `"confidence"` give the
AVER and CA-MKD baselines with the same adapter, head and losses, so only the aggregation differs.
"""

from __future__ import annotations

import keras

from keras_endokd.distill.base import DistillationTerm
from keras_endokd.distill.fusion import TeacherFusion
from keras_endokd.distill.rkd import pooled, rkd_loss
from keras_endokd.models.taps import FEATURE_TAPS, LOGITS


def _unit(x):
    return x / (keras.ops.norm(x, axis=-1, keepdims=True) + 1e-6)


@keras.saving.register_keras_serializable(package="keras_endokd")
class FusionDistillation(DistillationTerm):
    """The student matches a fusion of its teachers' `tap` features.

    Args:
      fusion: `attention` (multi-head attention), `mean` (AVER) or `confidence` (CA-MKD).
      tap: the tap read from student and teachers (default `feat_3`, the last feature map).
      width: common width D of the projected teacher features and the student adapter.
      num_heads: attention heads (`attention` fusion only).
    """

    def __init__(
        self, fusion: str = "attention", tap: str = "feat_3", width: int = 64, num_heads: int = 4, **kwargs
    ):
        super().__init__(**kwargs)
        if tap not in FEATURE_TAPS:
            raise ValueError(f"Fusion tap must be one of {FEATURE_TAPS}, got {tap!r}.")
        self.fusion_mode, self.tap, self.width, self.num_heads = fusion, tap, int(width), int(num_heads)
        self.fusion = TeacherFusion(fusion, width, num_heads, name="fusion")
        self.student_taps = (tap,)
        self.teacher_taps = (tap, LOGITS) if fusion == "confidence" else (tap,)
        self.adapter = keras.layers.Conv2D(self.width, 1, name="student_adapter")
        self.head = None

    @classmethod
    def default_loss_weights(cls):
        return {"loss_relation": 1.0, "loss_relation_rkd": 1.0, "loss_fusion_ce": 1.0}

    def build_for(self, student_shapes, teacher_shapes, num_classes):
        student_shape = student_shapes[self.tap]
        self.adapter.build(student_shape)
        self.fusion.build_for(student_shape, [s[self.tap] for s in teacher_shapes])
        self.head = keras.layers.Dense(num_classes, name="fusion_head")
        self.head.build((None, self.width))
        self.built = True

    def fuse(self, teacher_outputs, student_outputs, labels=None):
        """The fused teacher target [B, h, w, width] for this batch."""
        logits = [t[LOGITS] for t in teacher_outputs] if self.fusion_mode == "confidence" else None
        return self.fusion(
            [t[self.tap] for t in teacher_outputs], student_outputs[self.tap], logits, labels
        )

    def compute_loss(self, teacher_outputs, student_outputs, labels=None, training=True):
        fused = self.fuse(teacher_outputs, student_outputs, labels)
        target = keras.ops.stop_gradient(fused)
        adapted = self.adapter(student_outputs[self.tap])
        losses = {
            "loss_relation": keras.ops.mean(
                keras.ops.sum(keras.ops.square(_unit(adapted) - _unit(target)), axis=-1)
            ),
            "loss_relation_rkd": rkd_loss(pooled(adapted), pooled(target)),
        }
        if labels is None:
            losses["loss_fusion_ce"] = keras.ops.zeros(())
        else:
            losses["loss_fusion_ce"] = keras.ops.mean(
                keras.losses.sparse_categorical_crossentropy(
                    labels, self.head(pooled(fused)), from_logits=True
                )
            )
        return losses

    def get_config(self):
        return {
            **super().get_config(),
            "fusion": self.fusion_mode,
            "tap": self.tap,
            "width": self.width,
            "num_heads": self.num_heads,
        }
