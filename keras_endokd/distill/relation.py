"""Relation-based KD through a fused teacher target (the project's headline method).

Gammulle et al. 2023, "Learning Through Guidance: Knowledge Distillation for Endoscopic Image
Classification": instead of averaging teachers, a multi-head attention layer fuses their feature
maps into one target that guides the student. With F = fusion(teachers | student) [B, h, w, D],
A(S) the student's `tap` map through a trainable 1x1 adapter to width D, w [B, K] the fusion's
per-sample weight of each teacher (`TeacherFusion.teacher_weights`) and z_k, z_s the logits:

    loss_relation     = mean over positions || n(c(A(S))) - n(c(sg(F))) ||^2
    loss_relation_rkd = RKD(pool(A(S)), pool(sg(F)))                 (Park et al. 2019; weight 0.04)
    loss_relation_kd  = mean over the batch of sum_k sg(w_k) T^2 KL(softmax(z_k/T) || softmax(z_s/T))
    loss_fusion_ce    = CE(y, head(pool(F)))                          (trains the fusion only)

n: L2 over channels; c: centring, minus the batch's mean feature per channel, so that a direction
every sample shares is not matched for free. sg = stop-gradient. The student is pulled towards
the fused target position by position, in its relations between samples, and in its class
distribution, where the same weights that fuse the features say which teacher to listen to, per
sample (with `fusion="confidence"` this is CA-MKD's weighted KD, Zhang et al. 2022).

The fusion itself is trained only by `loss_fusion_ce`: its target must classify the image, which
keeps it from collapsing to a constant (or to the student) and makes it carry the teachers'
discriminative content. `fusion="mean"` and `"confidence"` give the AVER and CA-MKD baselines
with the same adapter, head and losses, so only the aggregation differs.

Also reported, not optimised: `fusion_entropy`, the mean entropy (nats) of the attention over
teachers (log K: no preference; 0: one teacher), and `fusion_weight_<k>`, teacher k's mean weight.
"""

from __future__ import annotations

import keras

from keras_endokd.distill.base import DistillationTerm, weighted_mean
from keras_endokd.distill.fusion import FUSION_MODES, TeacherFusion
from keras_endokd.distill.response import soft_kl_per_sample
from keras_endokd.distill.rkd import pooled, rkd_loss
from keras_endokd.models.taps import FEATURE_TAPS, LOGITS


def _unit(x):
    return x / (keras.ops.norm(x, axis=-1, keepdims=True) + 1e-6)


def _centred(x):
    return x - keras.ops.mean(x, axis=(0, 1, 2), keepdims=True)


@keras.saving.register_keras_serializable(package="keras_endokd")
class FusionDistillation(DistillationTerm):
    """The student matches a fusion of its teachers' `tap` features and their weighted logits.

    Args:
      fusion: `attention` (multi-head attention), `mean` (AVER) or `confidence` (CA-MKD).
      tap: the tap read from student and teachers (default `feat_3`, the last feature map).
      width: common width D of the projected teacher features and the student adapter.
      num_heads: attention heads (`attention` fusion only).
      temperature: softening temperature T of `loss_relation_kd`.
      centre: subtract the batch's mean feature before matching (see the module docstring).
    """

    def __init__(self, fusion: str = "attention", tap: str = "feat_3", width: int = 64, num_heads: int = 4,
                 temperature: float = 4.0, centre: bool = True, **kwargs):
        super().__init__(**kwargs)
        if tap not in FEATURE_TAPS:
            raise ValueError(f"Fusion tap must be one of {FEATURE_TAPS}, got {tap!r}.")
        if fusion not in FUSION_MODES:
            raise ValueError(f"Unknown fusion {fusion!r}; expected one of {FUSION_MODES}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.fusion_mode, self.tap, self.width, self.num_heads = fusion, tap, int(width), int(num_heads)
        self.temperature, self.centre = float(temperature), bool(centre)
        self.fusion = TeacherFusion(fusion, width, num_heads, name="fusion")
        self.student_taps = (tap, LOGITS)
        self.teacher_taps = (tap, LOGITS)
        self.adapter = keras.layers.Conv2D(self.width, 1, name="student_adapter")
        self.head = None

    @classmethod
    def default_loss_weights(cls):
        # RKD against the fused target at 1/25 of Park et al.'s scale: 0.04 (25 d + 50 a) = d + 2 a.
        # At their full scale the term dominated the objective (docs/loss_scales.md).
        return {"loss_relation": 1.0, "loss_relation_rkd": 0.04, "loss_relation_kd": 1.0, "loss_fusion_ce": 1.0}

    def build_for(self, student_shapes, teacher_shapes, num_classes):
        student_shape = student_shapes[self.tap]
        self.adapter.build(student_shape)
        self.fusion.build_for(student_shape, [s[self.tap] for s in teacher_shapes])
        self.head = keras.layers.Dense(num_classes, name="fusion_head")
        self.head.build((None, self.width))
        self.built = True

    def monitor_names(self, num_teachers):
        entropy = ["fusion_entropy"] if self.fusion_mode == "attention" else []
        return entropy + [f"fusion_weight_{k}" for k in range(num_teachers)]

    def fuse(self, teacher_outputs, student_outputs, labels=None):
        """The fused teacher target [B, h, w, width] for this batch."""
        logits = [t[LOGITS] for t in teacher_outputs]
        return self.fusion(
            [t[self.tap] for t in teacher_outputs], student_outputs[self.tap], logits, labels
        )

    def compute_loss(self, teacher_outputs, student_outputs, labels=None, training=True, sample_weight=None):
        fused = self.fuse(teacher_outputs, student_outputs, labels)
        target = keras.ops.stop_gradient(fused)
        adapted = self.adapter(student_outputs[self.tap])
        centre = _centred if self.centre else (lambda x: x)
        teacher_logits = [t[LOGITS] for t in teacher_outputs]
        weights = keras.ops.stop_gradient(self.fusion.teacher_weights(teacher_logits, labels))  # [B, K]
        kd = sum(weights[:, k] * soft_kl_per_sample(z, student_outputs[LOGITS], self.temperature)
                 for k, z in enumerate(teacher_logits))
        match = keras.ops.sum(keras.ops.square(_unit(centre(adapted)) - _unit(centre(target))), axis=-1)
        losses = {
            "loss_relation": weighted_mean(keras.ops.mean(match, axis=(1, 2)), sample_weight),
            "loss_relation_rkd": rkd_loss(pooled(adapted), pooled(target), sample_weight=sample_weight),
            "loss_relation_kd": weighted_mean(kd, sample_weight),
        }
        if labels is None:
            losses["loss_fusion_ce"] = keras.ops.zeros(())
        else:
            losses["loss_fusion_ce"] = weighted_mean(
                keras.losses.sparse_categorical_crossentropy(
                    labels, self.head(pooled(fused)), from_logits=True
                ),
                sample_weight,
            )
        mean_weights = keras.ops.mean(weights, axis=0)
        for k in range(len(teacher_outputs)):
            losses[f"fusion_weight_{k}"] = mean_weights[k]
        if self.fusion_mode == "attention":
            p = keras.ops.clip(self.fusion.last_attention_scores, 1e-9, 1.0)
            entropy = -keras.ops.sum(p * keras.ops.log(p), axis=-1)
            losses["fusion_entropy"] = keras.ops.mean(entropy)
        return losses

    def get_config(self):
        return {
            **super().get_config(),
            "fusion": self.fusion_mode,
            "tap": self.tap,
            "width": self.width,
            "num_heads": self.num_heads,
            "temperature": self.temperature,
            "centre": self.centre,
        }
