"""python -m experiments.bench_step: where a distillation step's time goes (why the cache's gain has a ceiling).

On one fixed batch, in one process, after warm-up: the median time of a training step of the
student alone, of the distillation step with cached teacher outputs and with live teachers, and
of the teachers' forward passes alone. The cache can at best remove the teachers' forward passes,
so (cached step + teacher forwards) / cached step bounds `bench_train`'s speed-up, and
(student step + teacher forwards) / student step bounds it even if distillation terms were free.
The student's own step is also timed with Keras' BatchNormalization in place of the fused one it
is built with (`keras_batchnorm_student_step_ms`; `models.fused_batchnorm`), in the same rounds.
Untrained models: the time of a step does not depend on the weights.

    python -m experiments.bench_step [--kd=relation] [--teachers=mobile_x3,mobile_x2,mobile_x2]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from keras_endokd.cli import parse_flags  # noqa: E402

# Its own FlagValues: the other benchmarks define --image_size too, and tests import them together.
FLAGS = flags.FlagValues()
flags.DEFINE_string("kd", "relation", "Distillation losses of the step.", flag_values=FLAGS)
flags.DEFINE_list("teachers", ["mobile_x3", "mobile_x2", "mobile_x2"], "Teachers (registry names).",
                  flag_values=FLAGS)
flags.DEFINE_integer("image_size", 128, "Input size.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 32, "Batch size.", flag_values=FLAGS)
flags.DEFINE_integer("rounds", 5, "Rounds; each times every kind of step for 3 steps, in turn.",
                     flag_values=FLAGS)
flags.DEFINE_boolean("deterministic", True, "TensorFlow op determinism, as the train command's "
                     "default.", flag_values=FLAGS)


def median_ms(functions: dict, rounds: int, steps: int = 3) -> dict:
    """{name: median ms of one call} over `rounds` rounds that call each function `steps` times
    in turn, after one warm-up round: a machine that speeds up or slows down shifts them alike."""
    times = {name: [] for name in functions}
    for r in range(rounds + 1):
        for name, fn in functions.items():
            for _ in range(steps):
                t0 = time.perf_counter()
                fn()
                if r:
                    times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def step_times(kd, teacher_names, image_size, batch_size, rounds) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_endokd.distill.distiller import IMAGE_KEY, TEACHERS_KEY, Distiller
    from keras_endokd.distill.registry import build_losses
    from keras_endokd.models.student import build_student
    from keras_endokd.models.teachers import build_teacher

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (batch_size, image_size, image_size, 3)), tf.float32)
    y = tf.constant(rng.integers(0, 8, batch_size), tf.int32)
    teachers = [build_teacher(name, 8, image_size) for name in teacher_names]

    def distiller(with_teachers: bool):
        keras.utils.set_random_seed(0)
        model = Distiller(student=build_student(8, image_size), teachers=teachers if with_teachers else [],
                          distillation_losses=build_losses(kd) if with_teachers else [])
        model.compile(keras.optimizers.Adam(1e-3), jit_compile=False)
        return model

    alone, live, cached = distiller(False), distiller(True), distiller(True)
    keras.utils.set_random_seed(0)
    unfused = with_keras_batchnorm(build_student(8, image_size))
    unfused.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    jit_compile=False)
    forwards = [tf.function(lambda image, g=g: g(image, training=False)) for g in live.teacher_tap_models]
    outputs = tuple({k: tf.constant(v) for k, v in f(x).items()} for f in forwards)
    batch = {IMAGE_KEY: x, TEACHERS_KEY: outputs}
    return median_ms({
        "student_step_ms": lambda: alone.train_on_batch(x, y),
        "keras_batchnorm_student_step_ms": lambda: unfused.train_on_batch(x, y),
        "cached_step_ms": lambda: cached.train_on_batch(batch, y),
        "live_step_ms": lambda: live.train_on_batch(x, y),
        "teacher_forwards_ms": lambda: [f(x) for f in forwards],
    }, rounds)


def with_keras_batchnorm(model):
    """A copy of `model` (fresh weights) whose FusedBatchNormalization layers are Keras' own."""
    import keras

    from keras_endokd.models.fused_batchnorm import FusedBatchNormalization

    def clone(layer):
        cls = keras.layers.BatchNormalization if isinstance(layer, FusedBatchNormalization) else type(layer)
        return cls.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)


def main(argv=None) -> int:
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    if FLAGS.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    t = step_times(FLAGS.kd, FLAGS.teachers, FLAGS.image_size, FLAGS.batch_size, FLAGS.rounds)
    for name, ms in t.items():
        print(f"{name:32s} {ms:8.1f}")
    t["speedup_measured"] = t["live_step_ms"] / t["cached_step_ms"]
    t["fused_batchnorm_speedup"] = t["keras_batchnorm_student_step_ms"] / t["student_step_ms"]
    t["speedup_ceiling_free_distillation"] = (t["student_step_ms"] + t["teacher_forwards_ms"]) / t["student_step_ms"]
    print(f"live / cached step: {t['speedup_measured']:.2f}x; ceiling if distillation terms cost "
          f"nothing: {t['speedup_ceiling_free_distillation']:.2f}x; the student's step with Keras' "
          f"BatchNormalization / with the fused one: {t['fused_batchnorm_speedup']:.2f}x")
    print(json.dumps({k: round(v, 2) for k, v in t.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
