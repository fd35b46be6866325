"""Run by test_reliability in a fresh process (logical CPU devices are fixed at TF start-up).

One SGD step of the Distiller on the same batch under the default strategy and under
`MirroredStrategy` on 2 logical CPU devices, with live teachers and with precomputed teacher
outputs (the cache path). If the Distiller scaled its terms wrongly across replicas, the updated
weights would differ. The batch is 4 images twice, so each replica's half has the same
BatchNormalization statistics as the whole batch, and every loss is per-sample (RKD, which
compares samples with each other, is weighted 0 here).
Prints one JSON line.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from keras_endokd.distribute import make_strategy  # noqa: E402

mirrored = make_strategy("mirrored", cpu_devices=2)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_endokd.distill.distiller import IMAGE_KEY, TEACHERS_KEY, Distiller  # noqa: E402
from keras_endokd.distill.registry import build_losses  # noqa: E402
from keras_endokd.models.student import build_student  # noqa: E402
from keras_endokd.models.teachers import build_teacher  # noqa: E402

SIZE, CLASSES = 32, 8


def distiller(strategy, weights=None):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        teachers = [build_teacher("tiny_resnet", CLASSES, SIZE), build_teacher("tiny_resnet", CLASSES, SIZE)]
        losses = build_losses("response,feature,relation", heads=2, loss_weights={"loss_relation_rkd": 0.0})
        model = Distiller(student=build_student(CLASSES, SIZE, dropout=0.0), teachers=teachers,
                          distillation_losses=losses)  # no random masks
        model.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
        model.optimizer.build(model.trainable_variables)
    if weights is not None:
        model.set_weights(weights)
    return model


def batch():
    rng = np.random.RandomState(0)
    half = rng.uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    return np.concatenate([half, half]), np.array([0, 1, 2, 3] * 2, dtype="int32")


def one_step(model, cached: bool):
    x, y = batch()
    if cached:
        outputs = [{k: v.numpy() for k, v in g(x, training=False).items()} for g in model.teacher_tap_models]
        x = {IMAGE_KEY: x, TEACHERS_KEY: tuple(outputs)}
    history = model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0)
    return history.history["loss"][0], [w.numpy() for w in model.student.trainable_weights]


def main():
    results = {"replicas": mirrored.num_replicas_in_sync}
    for cached in (False, True):
        single = distiller(tf.distribute.get_strategy())
        start = single.get_weights()
        before = [w.numpy() for w in single.student.trainable_weights]
        loss_single, w_single = one_step(single, cached)
        loss_mirrored, w_mirrored = one_step(distiller(mirrored, start), cached)
        results["cached" if cached else "live"] = {
            "loss_single": loss_single,
            "loss_mirrored": loss_mirrored,
            "max_weight_difference": max(float(np.abs(a - b).max()) for a, b in zip(w_single, w_mirrored)),
            "max_step": max(float(np.abs(a - b).max()) for a, b in zip(w_single, before)),
        }
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
