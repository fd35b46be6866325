"""python -m experiments.bench_infer: per-image LiteRT latency and size, student vs the others.

    python -m experiments.bench_infer [--run_dir=runs/latest] [--image_size=128] [--runs=200]

Models: the int8 student and the float32 student (the run's files, or a freshly built untrained
student converted with the project's `convert` functions when the run has none at this size),
each default teacher as float32 TFLite (trained from `--teacher_dir` when a file of that name
and size exists, else untrained: latency does not depend on the weights), and the usual
lightweight alternative, Keras' MobileNetV3Small (weights=None, 8 classes, preprocessing inside),
full-integer int8 with synthetic calibration images. Plus the int8 student's TFLite Micro arena.

How it is measured, and why:
- batch 1, `Interpreter(model_content=..., num_threads=n)` (LiteRT's default XNNPACK delegate),
  n = 1 and 2: what a camera pipeline on a device runs, frame by frame.
- invoke only: the input is set once and each `invoke()` is timed on its own with
  `time.perf_counter`, so Python-side quantization and tensor copies (host overhead a C++ app
  does not pay) stay out of the figure; only the model's kernels are timed.
- warm-up first: the first invokes pay one-off costs (XNNPACK weight packing, cold caches,
  lazy allocation) that a running device pays once, not per frame.
- the median of many timed invokes: robust to scheduler hiccups and other processes, which only
  ever add time, where a mean would follow them.
- one process, one runtime, models measured back to back: absolute milliseconds depend on the
  CPU; the ratios between models on the same machine are what carries over to another one.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", "runs/latest", "Run folder holding student_int8/float32.tflite.")
flags.DEFINE_string("teacher_dir", "runs/teachers", "Trained teachers (<name>-<key>.keras).")
flags.DEFINE_integer("image_size", 128, "Input size S (S x S x 3).")
flags.DEFINE_integer("runs", 200, "Timed invokes per model and thread count (after warm-up).")

NUM_CLASSES = 8
TARGET_MS, TARGET_SPEEDUP = 1.0, 5.0  # at 128x128, one x86 core
JSON_KEYS = ("image_size", "student_int8_ms", "mobilenetv3small_int8_ms",
             "speedup_vs_mobilenetv3small", "student_int8_bytes", "arena_bytes")


def latency_ms(model_bytes, num_threads, runs, warmup=20, seed=0):
    """Median milliseconds of one `invoke()` at batch 1, after `warmup` untimed invokes."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from keras_endokd.deploy.litert import quantize_input

    interp = Interpreter(model_content=model_bytes, num_threads=num_threads)
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    image = np.random.default_rng(seed).uniform(0, 255, detail["shape"]).astype(np.float32)
    interp.set_tensor(detail["index"], quantize_input(image, detail))  # once: invoke only
    for _ in range(warmup):
        interp.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def calibration_images(image_size, count=16, seed=0):
    """Synthetic float32 pixels in [0, 255], with one 0 and one 255 pixel so the int8 input scale
    is the raw-pixel one (scale 1, zero point -128)."""
    import numpy as np

    images = np.random.default_rng(seed).uniform(0, 255, (count, image_size, image_size, 3))
    images = images.astype(np.float32)
    images[0, 0, 0, :], images[0, -1, -1, :] = 0.0, 255.0
    return images


def _read(path, image_size):
    """The file's bytes when it exists and takes S x S images, else None."""
    from keras_endokd.deploy.litert import TFLiteModel

    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        data = f.read()
    return data if TFLiteModel(data).input_size == (image_size, image_size) else None


def _randomize_bn(model, seed=0):
    """Small random BatchNormalization offsets, like any trained model's. At init every folded
    bias is zero, the converter stores all equal bias tensors in one shared buffer, and TFLite
    Micro aborts the whole process (SIGABRT, not an exception) on such a model. Latency is
    unaffected."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma, rng.normal(0, 0.1, beta.shape).astype(beta.dtype), mean, var])
    return model


def _params(model):
    return int(sum(int(w.numpy().size) for w in model.trainable_weights))


def candidates(run_dir, teacher_dir, image_size):
    """[(name, trainable params, tflite bytes, source)]: student int8/float32, teachers, MNv3S."""
    import keras

    from keras_endokd.deploy.convert import probability_model, to_tflite
    from keras_endokd.models.student import build_student
    from keras_endokd.models.teachers import DEFAULT_TEACHERS, build_teacher

    student = _randomize_bn(build_student(NUM_CLASSES, image_size))
    rows = []
    for kind, io in (("int8", "int8"), ("float32", None)):
        data, source = _read(os.path.join(run_dir, f"student_{kind}.tflite"), image_size), "run"
        if data is None:
            rep = calibration_images(image_size) if io else None
            data = to_tflite(probability_model(student), rep, io or "float32", io or "float32")
            source = "untrained"
        rows.append((f"student_{kind}", _params(student), data, source))
    for name in DEFAULT_TEACHERS:
        teacher, source = None, "untrained"
        paths = glob.glob(os.path.join(teacher_dir, f"{name}.keras"))
        for path in paths + sorted(glob.glob(os.path.join(teacher_dir, f"{name}-*.keras"))):
            try:
                teacher = build_teacher(path, NUM_CLASSES, image_size)
                source = "trained"
                break
            except ValueError:  # another image size or class count
                continue
        teacher = teacher or build_teacher(name, NUM_CLASSES, image_size)
        rows.append((f"{name}_float32", _params(teacher), to_tflite(probability_model(teacher)),
                     source))
    mnv3 = keras.applications.MobileNetV3Small(
        input_shape=(image_size, image_size, 3), weights=None, classes=NUM_CLASSES,
        include_preprocessing=True)  # expects [0, 255]; ends in a softmax already
    rows.append(("mobilenetv3small_int8", _params(mnv3),
                 to_tflite(mnv3, calibration_images(image_size), "int8", "int8"), "untrained"))
    return rows


def benchmark(run_dir="runs/latest", teacher_dir="runs/teachers", image_size=128, runs=200):
    """Measure, print the table, and print the JSON summary as the last line; returns it."""
    from keras_endokd.deploy.micro import measure_arena_isolated

    rows = candidates(run_dir, teacher_dir, image_size)
    warmup = max(5, min(50, runs // 4))
    results = []
    for name, params, data, source in rows:
        ms = [latency_ms(data, n, runs, warmup) for n in (1, 2)]
        results.append((name, params, len(data), len(gzip.compress(data, 9)), *ms, source))
    student_ms = results[0][4]
    print(f"\nLiteRT batch-1 invoke latency at {image_size}x{image_size}: median of {runs} "
          f"invokes after {warmup} warm-up, {os.cpu_count()} CPU cores visible")
    print(f"{'model':<24}{'params':>10}{'bytes':>11}{'gzip':>10}{'ms 1 thr':>10}{'ms 2 thr':>10}"
          f"{'speedup':>9}  weights  (speedup: model ms / student_int8 ms)")
    for name, params, size, gz, ms1, ms2, source in results:
        print(f"{name:<24}{params:>10,}{size:>11,}{gz:>10,}{ms1:>10.3f}{ms2:>10.3f}"
              f"{ms1 / student_ms:>8.1f}x  {source}")
    arena = measure_arena_isolated(rows[0][2])
    arena_bytes = arena["arena_used_bytes"] if arena else None
    print("TFLite Micro arena of student_int8: " + (
        f"{arena_bytes:,} bytes used ({arena_bytes / 1024:.1f} KiB), "
        f"{arena['arena_size_recommended']:,} recommended" if arena else "n/a (no tflite_micro)"))
    mnv3, fp32 = results[-1], results[1]
    speedup = mnv3[4] / student_ms
    print(f"Ratios (1 thread): student_int8 is {speedup:.2f}x faster and "
          f"{mnv3[2] / results[0][2]:.1f}x smaller than MobileNetV3Small int8; "
          f"{fp32[4] / student_ms:.2f}x faster and {fp32[2] / results[0][2]:.1f}x smaller than "
          f"student_float32; 2 threads run it {student_ms / results[0][5]:.2f}x faster than 1.")
    note = "" if image_size == 128 else f" (targets are set at 128x128; this is {image_size})"
    print(f"Target student_int8 < {TARGET_MS:g} ms on 1 thread: "
          f"{'MET' if student_ms < TARGET_MS else 'NOT MET'} ({student_ms:.3f} ms){note}")
    print(f"Target >= {TARGET_SPEEDUP:g}x faster than MobileNetV3Small int8: "
          f"{'MET' if speedup >= TARGET_SPEEDUP else 'NOT MET'} ({speedup:.2f}x){note}")
    summary = dict(zip(JSON_KEYS, (image_size, round(student_ms, 4), round(mnv3[4], 4),
                                   round(speedup, 3), results[0][2], arena_bytes)))
    print(json.dumps(summary), flush=True)
    return summary


def main(argv):
    del argv
    benchmark(FLAGS.run_dir, FLAGS.teacher_dir, FLAGS.image_size, FLAGS.runs)


if __name__ == "__main__":
    app.run(main)
