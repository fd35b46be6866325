"""`FusedBatchNormalization`: Keras' BatchNormalization, trained through TensorFlow's fused kernel.

Keras 3 normalises a training batch with separate ops on the TensorFlow backend (`ops.moments`,
then `tf.nn.batch_normalization`, and their gradients op by op), where tf_keras called the fused
kernel (`FusedBatchNormV3`: statistics, normalisation and gradient each in one pass over the
activations). For the student, whose 13 BatchNormalization layers sit on maps up to 64x64x16 at
128x128, the fused kernel makes a whole training step about 1.4x faster on CPU
(docs/benchmarks.md, "The student's training step").

The computation is Keras' own, in training mode, for a 4-D float32 channels-last input x [B, H, W, C]:

    mean = mean over B, H, W of x;   variance = mean over B, H, W of (x - mean)^2   (biased)
    y = gamma * (x - mean) / sqrt(variance + epsilon) + beta
    moving_mean     <- momentum * moving_mean     + (1 - momentum) * mean
    moving_variance <- momentum * moving_variance + (1 - momentum) * variance

(the kernel returns the unbiased variance n / (n - 1) * variance for the moving average, with n = B * H * W;
it is scaled back, so the moving statistics are exactly Keras'). Every other case (inference,
a frozen layer, masks, other ranks, axes or dtypes, synchronised statistics, renorm) is Keras' own
code, so the saved configuration, the weights and the converted TFLite graph (inference
BatchNorm, folded into the convolutions) are those of `keras.layers.BatchNormalization`.

The layer is registered as `keras_endokd>FusedBatchNormalization`: a model that holds it loads
with `keras.saving.load_model` once `keras_endokd.models.fused_batchnorm` is imported (this
package's commands and loaders import it).
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="keras_endokd")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs TensorFlow's fused kernel."""

    def _fusable(self, inputs, training, mask) -> bool:
        return (training is True and self.trainable and mask is None and keras.backend.backend() == "tensorflow"
                and len(inputs.shape) == 4 and self.axis in (-1, 3) and inputs.dtype == "float32"
                and self.scale and self.center and not self.synchronized and not self.renorm)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        outputs, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=self.gamma.value, offset=self.beta.value,
            mean=tf.constant([], tf.float32), variance=tf.constant([], tf.float32),
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
        n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
        variance = unbiased * tf.maximum(n - 1.0, 0.0) / n
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return outputs
