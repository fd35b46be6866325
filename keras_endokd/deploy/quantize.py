"""What int8 quantization needs: representative images, and quantization-aware training (QAT).

Post-training quantization (the default) calibrates every activation range on representative
images: training-split images (never validation or test), through THE preprocessing
(`data.pipeline.image_dataset`: decode, optional border crop, resize), not augmented.

QAT (Jacob et al. 2018, "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference") fine-tunes the student with fake-quantized weights and
activations, so it learns around the int8 rounding. tfmot does it on the tf_keras twin
(`deploy.twin`); on a pruned student the `Default8BitPrunePreserveQuantizeScheme` keeps the
zeros (Pruning-Preserving QAT; depthwise kernels, which that scheme leaves out, are re-masked after
every step). The fine-tuning keeps distillation on (`prune.distillation_loss`).
TF 2.21's converter turns the tf_keras QAT model into a full-integer model: checked here to
agree with the QAT model (max probability difference ~1e-3 on random inputs).
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tf_keras

from keras_endokd.console import progress
from keras_endokd.data.tf_datasets import image_dataset
from keras_endokd.data.source import Split
from keras_endokd.deploy.prune import distillation_loss, fine_tune_dataset, fine_tune_targets, progress_callback
from keras_endokd.deploy.twin import to_tf_keras

MIN_REPRESENTATIVE = 100


def representative_images(train: Split, image_size: int, count: int = 256, crop_border: bool = False,
                          seed: int = 0) -> np.ndarray:
    """float32 [n, S, S, 3] pixels of `count` training images (all when fewer), seeded random.

    The first image gets one black (0) and one white (255) pixel: the converter calibrates the
    integer input range from these images, and only the full [0, 255] range gives the input
    scale 1 that lets a device feed camera bytes as they are (see `convert.check_pixel_input`).
    Two pixels out of 16k do not move the activation ranges.
    """
    if not len(train):
        raise ValueError("the training split is empty: no representative images for quantization")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(train))[:count])
    images = np.stack(list(image_dataset(train.subset(chosen), image_size, crop_border)
                           .as_numpy_iterator())).astype(np.float32)
    images[0, 0, 0, :] = 0.0
    images[0, -1, -1, :] = 255.0
    return images


def _output_only_config(tfmot):
    """QuantizeConfig of a weightless layer tfmot does not know (Rescaling): int8 output only."""
    qk = tfmot.quantization.keras

    class OutputOnlyQuantizeConfig(qk.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [qk.quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    return OutputOnlyQuantizeConfig


def _pin_input_range(qat_model):
    """Sets the input QuantizeLayer's range to [0, 255] (it only widens on training data)."""
    layer = next(l for l in qat_model.layers if type(l).__name__ == "QuantizeLayer")
    for w in layer.weights:
        if w.name.endswith("_min:0"):
            w.assign(0.0)
        elif w.name.endswith("_max:0"):
            w.assign(255.0)


def _keep_zeros(student, qat_model):
    """A callback that re-zeroes, after every step, the kernel weights that are zero in `student`.

    The PrunePreserve scheme keeps the zeros of the layers it knows (Conv2D, Dense), not those
    of DepthwiseConv2D (measured: pruned layers' sparsity 50% -> 46% after one QAT epoch), so
    every pruned kernel is masked here as well (a no-op where the scheme already kept them).
    """
    masks = {}
    for layer in student.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            kernel = np.asarray(layer.get_weights()[0])
            if np.any(kernel == 0):
                masks[layer.name] = (kernel != 0).astype(np.float32)
    variables = []
    for w in qat_model.weights:
        layer_name, _, leaf = w.name.rpartition("/")
        if leaf.split(":")[0] in ("kernel", "depthwise_kernel") and layer_name in masks:
            variables.append((w, masks[layer_name]))

    def apply(*_):
        for variable, mask in variables:
            variable.assign(variable * mask)

    return tf_keras.callbacks.LambdaCallback(on_train_batch_end=apply), len(variables)


def quantization_aware_training(
    student: keras.Model,
    train: Split,
    *,
    image_size: int,
    teacher_logits: Optional[np.ndarray] = None,
    temperature: float = 4.0,
    epochs: int = 3,
    batch_size: int = 64,
    learning_rate: float = 1e-4,
    crop_border: bool = False,
    prune_preserve: bool = False,
    seed: int = 0,
    verbose: int = 0,
):
    """QAT-fine-tunes the student's tf_keras twin; returns it topped with a Softmax (tf_keras).

    The result is what `convert.to_tflite` turns into the int8/uint8 models.
    """
    import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS: tf.keras is tf_keras

    qk = tfmot.quantization.keras
    keras.utils.set_random_seed(seed)
    tf_keras.utils.set_random_seed(seed)
    output_only = _output_only_config(tfmot)
    twin = to_tf_keras(student)

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer
        if isinstance(layer, tf_keras.layers.Rescaling):
            return qk.quantize_annotate_layer(layer, quantize_config=output_only())
        return qk.quantize_annotate_layer(layer)

    annotated = qk.quantize_annotate_model(tf_keras.models.clone_model(twin, clone_function=annotate))
    with qk.quantize_scope({"OutputOnlyQuantizeConfig": output_only}):
        if prune_preserve:
            qat = qk.quantize_apply(
                annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
        else:  # the default 8-bit scheme
            qat = qk.quantize_apply(annotated)
    _pin_input_range(qat)
    qat.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                loss=distillation_loss(temperature, teacher_logits is not None))
    data = fine_tune_dataset(train, fine_tune_targets(train.labels, teacher_logits), image_size,
                             crop_border, batch_size, seed)
    callbacks = [_keep_zeros(student, qat)[0]] if prune_preserve else []
    steps = max(1, -(-len(train) // batch_size))
    with progress(epochs * steps, "quantization-aware training (steps)") as bar:
        qat.fit(data, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks + [progress_callback(bar)],
                verbose=verbose)
    _pin_input_range(qat)
    probabilities = tf_keras.layers.Softmax(name="probability")(qat.output)
    return tf_keras.Model(qat.input, probabilities, name=f"{student.name}_qat")
