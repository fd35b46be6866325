"""Magnitude pruning of the student, fine-tuned with distillation still on.

Method: Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for model
compression" (arXiv:1710.01878), as tensorflow-model-optimization's `prune_low_magnitude` does
it. The smallest-magnitude weights of each pruned kernel are zeroed on the polynomial schedule

    s(t) = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_end - t_0))^3,   s_i = 0, s_f = `sparsity`,

while fine-tuning goes on, so the network adapts as it loses weights. The schedule runs over the
first 2/3 of the fine-tuning steps (the masks are updated about ten times); the rest recovers at
the final sparsity (`fine_tune_steps`).

Loss: CE(label) + T^2 KL(softmax(z_t/T) || softmax(z_s/T)) (Hinton et al. 2015, "Distilling
the Knowledge in a Neural Network"; `distill.response.soft_kl`), z_t [N, C] the teachers' mean
logits over the training images, computed once before fine-tuning on the images without
augmentation, so that each cached target belongs to the image it is paired with. No teachers:
CE only.

Inputs: splits whose images are in memory, already preprocessed (`deploy.export_images`):
uint8 [N, S, S, 3] pixels and int labels [N]. The export decodes each split once; everything
here slices those arrays.

tfmot prunes tf_keras models only, so the student goes through its tf_keras twin
(`deploy.twin`) and comes back into Keras 3 after `strip_pruning`.

Which layers: the Conv2D, DepthwiseConv2D and Dense kernels, except `stem_conv` (3x3x3x16 =
432 weights) and `block1_dw` (3x3x16 = 144) by default (`DEFAULT_SKIP`). They hold 1.2% of the
weights, but every feature of the network flows through them at full resolution (a 3x3x3 stem
filter with half its taps gone no longer sees colour edges): pruning them saves almost nothing
and costs accuracy (docs/results.md, "Pruning"). BatchNorm is never pruned (it folds into the
convolutions), nor are biases; tfmot itself would leave DepthwiseConv2D dense (see
`_prunable_depthwise_class`). After fine-tuning, the BatchNorm statistics are recomputed
(`recalibrate_batchnorm`).
"""

from __future__ import annotations

import math
import time
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
import tf_keras

from keras_endokd.console import progress
from keras_endokd.data.tf_datasets import AUTOTUNE, image_dataset
from keras_endokd.data.source import Split
from keras_endokd.deploy.twin import to_keras, to_tf_keras
from keras_endokd.distill.response import soft_kl
from keras_endokd.models.taps import as_logits, ends_in_softmax

DEFAULT_SKIP = ("stem_conv", "block1_dw")
_PRUNABLE = ("Conv2D", "DepthwiseConv2D", "Dense")
_PRUNE_FRACTION = 2 / 3  # of the fine-tuning steps spent raising the sparsity


def _prunable_depthwise_class(tfmot):
    """tf_keras DepthwiseConv2D whose kernel tfmot prunes.

    tfmot's registry lists DepthwiseConv2D with no prunable weights (it leaves depthwise kernels
    dense); a `PrunableLayer` names its own. Created lazily: importing tfmot has side effects.
    """

    class PrunableDepthwiseConv2D(tf_keras.layers.DepthwiseConv2D,
                                  tfmot.sparsity.keras.PrunableLayer):
        def get_prunable_weights(self):
            return [self.depthwise_kernel]

    return PrunableDepthwiseConv2D


def _kernels(model):
    """(layer name, kernel array) of each Conv2D / DepthwiseConv2D / Dense, also inside wrappers
    (a QAT QuantizeWrapper holds its layer's kernel itself, named `<layer>/kernel:0`)."""
    for layer in model.layers:
        inner = getattr(layer, "layer", layer)
        if not isinstance(inner, _kernel_classes(inner)):
            continue
        kernels = [w for w in layer.weights if w.name.split("/")[-1].split(":")[0]
                   in ("kernel", "depthwise_kernel")]
        yield inner.name, np.asarray(kernels[0])


def kernel_sparsity(model, skip: Sequence[str] = ()) -> dict:
    """Zeros in the kernels of every Conv2D / DepthwiseConv2D / Dense layer (Keras 3 or tf_keras,
    QAT-wrapped or not).

    Returns {"layers": {name: {"weights", "zeros", "sparsity", "pruned"}}, "pruned_layers":
    sparsity over the layers not in `skip`, "all_kernels": over every such kernel,
    "all_params": zeros over every trainable parameter (biases and BatchNorm included)}.
    """
    layers, totals = {}, {"pruned": [0, 0], "all": [0, 0]}
    for name, kernel in _kernels(model):
        zeros, size = int(np.sum(kernel == 0)), int(kernel.size)
        pruned = name not in skip
        layers[name] = {"weights": size, "zeros": zeros, "sparsity": zeros / size, "pruned": pruned}
        for key in (("pruned", "all") if pruned else ("all",)):
            totals[key][0] += zeros
            totals[key][1] += size
    params = [np.asarray(w) for w in model.trainable_weights]
    n_params = sum(p.size for p in params)
    return {
        "layers": layers,
        "pruned_layers": totals["pruned"][0] / max(totals["pruned"][1], 1),
        "all_kernels": totals["all"][0] / max(totals["all"][1], 1),
        "all_params": sum(int(np.sum(p == 0)) for p in params) / max(n_params, 1),
        "kernel_weights": totals["all"][1],
        "params": int(n_params),
    }


def _kernel_classes(layer):
    """Conv2D / DepthwiseConv2D / Dense of the layer's own library (Keras 3 or tf_keras)."""
    lib = keras if isinstance(layer, keras.layers.Layer) else tf_keras
    return tuple(getattr(lib.layers, name) for name in _PRUNABLE)


def _pixels(split: Split) -> np.ndarray:
    """uint8 [N, S, S, 3]: the split's preprocessed images (in memory, see module docstring)."""
    if split.images is None:
        raise ValueError("pruning takes splits with their images in memory, preprocessed "
                         "(keras_endokd.deploy.export_images.preprocessed), not image files")
    return split.images


def _batches(images: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """float32 [B, S, S, 3] batches of uint8 `images`, in order."""
    return (tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
            .map(lambda x: tf.cast(x, tf.float32), num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE))


def progress_callback(bar):
    """A tf_keras callback that counts each training batch on a `console.Progress` bar."""
    import tf_keras

    class _Steps(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            bar.update()

    return _Steps()


def teacher_logits(teachers: Sequence[keras.Model], split: Split,
                   batch_size: int = 64) -> Optional[np.ndarray]:
    """Mean logits of the Keras 3 teachers over `split`'s images, in order: [N, C], or None.

    A teacher ending in a softmax gives log-probabilities: logits up to a per-image constant,
    which softmax(. / T) cancels (`models.taps.as_logits`)."""
    if not teachers:
        return None
    images = _batches(_pixels(split), batch_size)
    return np.mean([np.asarray(as_logits(t.predict(images, verbose=0), ends_in_softmax(t)))
                    for t in teachers], axis=0).astype(np.float32)


def accuracy(model: keras.Model, split: Split, batch_size: int = 64) -> float:
    """Top-1 accuracy of `model` (logits or probabilities out) on `split`; NaN when it is empty."""
    if not len(split):
        return float("nan")
    predictions = np.argmax(model.predict(_batches(_pixels(split), batch_size), verbose=0), axis=-1)
    return float(np.mean(predictions == split.labels))


def distillation_loss(temperature: float, with_teacher: bool):
    """y_true packs [label, teacher logits...] so that tf_keras' `fit` carries both."""

    def loss(y_true, logits):
        labels = tf.cast(y_true[:, 0], tf.int32)
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        if not with_teacher:
            return ce
        return ce + soft_kl(y_true[:, 1:], logits, temperature)

    return loss


def recalibrate_batchnorm(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> None:
    """Sets each BatchNormalization's moving mean and variance to its inputs' exact statistics.

    Layer by layer in graph order, over `images` (uint8 or float [N, S, S, 3]) in inference
    mode, so each layer sees the already recalibrated layers before it. Pruning shifts every
    activation's statistics, and a few fine-tuning steps at momentum 0.99 leave the moving
    averages far behind them while the batch statistics stay right (docs/results.md,
    "Pruning"). Li et al. 2020, "EagleEye: Fast Sub-net Evaluation for Efficient Neural Network
    Pruning", recompute the statistics the same way ("adaptive BN").
    """
    batches = _batches(np.asarray(images), batch_size)
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        moments = _input_moments(keras.Model(model.inputs[0], layer.input))
        total, squares, count = 0.0, 0.0, 0
        for batch in batches:
            s, q, n = (np.asarray(t) for t in moments(batch))
            total, squares, count = total + s, squares + q, count + int(n)
        mean = total / count
        variance = np.maximum(squares / count - mean * mean, 0.0)
        gamma, beta = layer.get_weights()[:2]
        layer.set_weights([gamma, beta, mean.astype(np.float32), variance.astype(np.float32)])


def _input_moments(probe: keras.Model):
    """A compiled function of a float32 batch [B, ...]: the float64 sum and sum of squares over
    every axis but the last (channels) of `probe`'s inference-mode output, and their count.

    Compiled, and reduced before leaving the graph: eager calls and float64 copies of whole
    activation maps cost more than the forward passes themselves.
    """

    @tf.function(reduce_retracing=True)
    def moments(x):
        y = tf.cast(probe(x, training=False), tf.float64)
        axes = list(range(len(y.shape) - 1))
        count = tf.reduce_prod(tf.shape(y)[:-1])
        return tf.reduce_sum(y, axes), tf.reduce_sum(tf.square(y), axes), count

    return moments


def calibration_images(split: Split, count: int = 1024, seed: int = 0) -> np.ndarray:
    """uint8 [n, S, S, 3]: up to `count` seeded-random images of `split`, in the split's order."""
    chosen = np.sort(np.random.default_rng(seed).permutation(len(split))[:count])
    return _pixels(split)[chosen]


def fine_tune_targets(labels, teacher_logits=None) -> np.ndarray:
    """[N, 1 + C] float32: the label, then the teachers' logits (what `distillation_loss` reads)."""
    targets = np.asarray(labels, np.float32)[:, None]
    if teacher_logits is None:
        return targets
    return np.concatenate([targets, np.asarray(teacher_logits, np.float32)], axis=1)


def fine_tune_batches(images, targets, batch_size: int, seed: int) -> tf.data.Dataset:
    """Endless shuffled (float32 [B, S, S, 3], targets [B, 1 + C]) batches; every batch full.

    `images`: uint8 [N, S, S, 3] (an array or an unbatched dataset); `targets`:
    `fine_tune_targets`. Shuffled with `seed`, reshuffled each epoch, not augmented.
    """
    if isinstance(images, np.ndarray):
        images = tf.data.Dataset.from_tensor_slices(images)
    count = len(targets)
    ds = tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(targets))
    ds = ds.shuffle(min(count, 10_000), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.batch(batch_size)  # after repeat(): every batch is full
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y), AUTOTUNE).prefetch(AUTOTUNE)


def fine_tune_dataset(split, targets, image_size, crop_border, batch_size, seed):
    """`fine_tune_batches` of any split: one in memory at `image_size` is sliced as it is; image
    files are decoded once and cached."""
    images = image_dataset(split, image_size, crop_border)
    if split.images is None:
        images = images.cache()
    return fine_tune_batches(images, targets, batch_size, seed)


def fine_tune_steps(num_images: int, batch_size: int, epochs: int) -> tuple:
    """(steps per epoch, pruning end step, pruning frequency) of the schedule.

    The masks are updated every `frequency` steps up to `end_step` inclusive, so end_step is a
    multiple of the frequency (otherwise the last update falls short of the target sparsity)
    and lies before the last step. At least 2 steps in all: the schedule needs end > begin.
    """
    steps = max(1, math.ceil(num_images / batch_size))
    if steps * epochs < 2:
        steps = 2
    total = steps * epochs
    target_end = max(1, min(total - 1, round(total * _PRUNE_FRACTION)))
    frequency = max(1, target_end // 10)
    return steps, frequency * (target_end // frequency), frequency


def prune_student(
    student: keras.Model,
    train: Split,
    val: Split,
    *,
    sparsity: float = 0.5,
    teacher_logits: Optional[np.ndarray] = None,
    temperature: float = 4.0,
    epochs: int = 3,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    skip: Sequence[str] = DEFAULT_SKIP,
    seed: int = 0,
    verbose: int = 0,
) -> tuple:
    """Prunes `student` to `sparsity` and fine-tunes it; returns (pruned Keras 3 student, report).

    `train`, `val`: splits with their preprocessed images in memory, uint8 [N, S, S, 3] with S
    the student's input size. `teacher_logits` [len(train), C] are the teachers' (mean) logits
    on `train`'s images, in order (see `teacher_logits`). `sparsity` 0 returns the student
    unchanged. The report holds the per-layer sparsity counted from the weights, and validation
    accuracy before and after.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    for name, split in (("train", train), ("val", val)):
        if _pixels(split).shape[1:] != tuple(student.input_shape[1:]):
            raise ValueError(f"the {name} images are {_pixels(split).shape[1:]}, the student "
                             f"takes {tuple(student.input_shape[1:])}")
    before = accuracy(student, val, batch_size)
    if sparsity == 0:
        every = [name for name, _ in _kernels(student)]
        return student, {"target_sparsity": 0.0, "skipped": True, "skipped_layers": every,
                         "val_accuracy_before": before, "val_accuracy_after": before,
                         "sparsity": kernel_sparsity(student, skip=every)}
    if teacher_logits is not None and len(teacher_logits) != len(train):
        raise ValueError(f"{len(teacher_logits)} teacher logits for {len(train)} training images")
    import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS: tf.keras is tf_keras

    start = time.time()
    keras.utils.set_random_seed(seed)
    tf_keras.utils.set_random_seed(seed)
    twin = to_tf_keras(student, classes={"DepthwiseConv2D": _prunable_depthwise_class(tfmot)})
    steps, end_step, frequency = fine_tune_steps(len(train), batch_size, epochs)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end_step,
        frequency=frequency)
    names = {l.name for l in student.layers if isinstance(l, _kernel_classes(l))} - set(skip)

    def wrap(layer):
        if layer.name in names:
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    # clone_function returns the twin's own layer objects, so their weights carry over.
    pruned = tf_keras.models.clone_model(twin, clone_function=wrap)
    targets = fine_tune_targets(train.labels, teacher_logits)
    pruned.compile(optimizer=tf_keras.optimizers.Adam(learning_rate),
                   loss=distillation_loss(temperature, teacher_logits is not None))
    data = fine_tune_batches(train.images, targets, batch_size, seed)
    with progress(epochs * steps, "fine-tuning the pruned student (steps)") as bar:
        pruned.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=verbose,
                   callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), progress_callback(bar)])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    result = to_keras(stripped, student)
    recalibrate_batchnorm(result, calibration_images(train, seed=seed), batch_size)
    report = {
        "target_sparsity": float(sparsity),
        "skipped": False,
        "skipped_layers": list(skip),
        "schedule": {"kind": "PolynomialDecay", "power": 3, "begin_step": 0,
                     "end_step": end_step, "frequency": frequency,
                     "total_steps": steps * epochs},
        "fine_tune": {"epochs": epochs, "steps_per_epoch": steps, "batch_size": batch_size,
                      "learning_rate": learning_rate,
                      "loss": "CE + T^2 KL(teachers || student)" if teacher_logits is not None
                      else "CE", "temperature": temperature, "images": len(train),
                      "seconds": round(time.time() - start, 1)},
        "batchnorm": "moving statistics recomputed on up to 1024 training images",
        "val_accuracy_before": before,
        "val_accuracy_after": accuracy(result, val, batch_size),
        "sparsity": kernel_sparsity(result, skip=skip),
    }
    return result, report
