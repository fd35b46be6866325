"""python -m experiments.bench_infer: per-image LiteRT latency, size and compute, student vs the others.

    python -m experiments.bench_infer [--tflite_dir=tflite] [--run_dir=runs/latest]
        [--image_size=128] [--runs=200]

Models:
- the student as shipped: the pruned, mixed-scale int8 model of the export (the repository's
  `tflite/student_int8.tflite`), and its float32 model (`tflite/student_float32.tflite` when
  present); each looked for in `--tflite_dir`, then `--run_dir`, and, when neither holds one that
  takes S x S images, a freshly built untrained student converted with the project's `convert`
  functions (dense, per-channel scales: the `source` column says which was measured);
- each default teacher as float32 TFLite (trained from `--teacher_dir` when a file of that name
  and size exists, else untrained: latency does not depend on the weights);
- Keras' MobileNetV3Small (weights=None, 8 classes, preprocessing inside), the usual lightweight
  alternative, as float32 and as full-integer int8 (synthetic calibration images);
- a peak probe: one 1x1 convolution of `--peak_channels` to `--peak_channels` channels on a
  `--peak_spatial` squared map, int8 and float32. It is one large matrix multiply
  (spatial^2 x channels by channels x channels), the kernel XNNPACK runs fastest, so its MAC/s is
  a practical ceiling for this CPU, runtime and thread count (the faster of one measurement
  before and one after the models), not the CPU's theoretical peak: a model can exceed it.
  Plus the int8 student's TFLite Micro arena.

Compute (MACs): multiply-accumulates of one S x S frame, from the Keras model's layers: Conv2D
H_out * W_out * k_h * k_w * C_in / groups * C_out, DepthwiseConv2D H_out * W_out * k_h * k_w *
C_in * depth_multiplier, Dense (positions) * units_in * units_out. BatchNorm (folded), activations,
pooling, additions and the squeeze-excite multiplies are not counted. Pruning zeros weights but
the int8 kernels are dense, so the shipped model runs the same MACs. Efficiency = MACs / latency
(MAC/s), and that as a share of the peak probe's MAC/s of the same precision and thread count.

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
  CPU (int8 above all: AVX-512 VNNI / AVX-VNNI dot products, or none); the ratios between models
  of the same precision on the same machine are what carries over to another one.
- like with like: int8 against int8, float32 against float32, and each model's best (the faster
  of its int8 and float32, 1 thread) against the other's best.

The last line is a JSON object; `*_ms` are milliseconds per frame on 1 thread, `*_macs` MACs per
frame, `cpu_features` the instruction-set extensions of /proc/cpuinfo that matter here.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import platform

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from keras_endokd.deploy.litert import latency_ms  # noqa: E402

REPO_TFLITE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tflite")

FLAGS = flags.FLAGS
flags.DEFINE_string("tflite_dir", REPO_TFLITE_DIR, "Shipped models (student_int8/float32.tflite), "
                    "looked for first.")
flags.DEFINE_string("run_dir", "runs/latest", "Run folder holding student_int8/float32.tflite, "
                    "looked for second.")
flags.DEFINE_string("teacher_dir", "runs/teachers", "Trained teachers (<name>-<key>.keras).")
flags.DEFINE_integer("image_size", 128, "Input size S (S x S x 3).")
flags.DEFINE_integer("runs", 200, "Timed invokes per model and thread count (after warm-up).")
flags.DEFINE_integer("peak_spatial", 32, "Peak probe: spatial size of the 1x1 convolution's map.")
flags.DEFINE_integer("peak_channels", 256, "Peak probe: input and output channels.")

NUM_CLASSES = 8
TARGET_MS, TARGET_SPEEDUP = 1.0, 5.0  # at 128x128, one x86 core
# Student best vs MobileNetV3Small best: at least this share of the MAC ratio.
TARGET_MAC_RATIO_SHARE = 0.8
JSON_KEYS = ("image_size", "student_int8_ms", "mobilenetv3small_int8_ms",
             "speedup_vs_mobilenetv3small", "student_int8_bytes", "arena_bytes")
NEW_JSON_KEYS = ("student_macs", "mobilenetv3small_macs", "student_best_ms",
                 "mobilenetv3small_best_ms", "cpu_features", "cpu_model", "student_float32_ms",
                 "mobilenetv3small_float32_ms", "speedup_float32_vs_mobilenetv3small",
                 "speedup_best_vs_mobilenetv3small", "mac_ratio_vs_mobilenetv3small",
                 "best_vs_mac_ratio_met", "student_int8_source", "peak_int8_gmacs",
                 "peak_float32_gmacs", "student_int8_share_of_peak",
                 "mobilenetv3small_int8_share_of_peak")
# Extensions that change what the int8 and float32 kernels can use (x86, then Arm).
CPU_FEATURES = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avxvnni", "avxvnniint8",
                "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "sve2",
                "bf16", "neon")


def cpu_info(path="/proc/cpuinfo"):
    """(model name, [present features of CPU_FEATURES, in that order]) from `path`.

    Reads the first processor's `flags` (x86) or `Features` (Arm) line; where the file is
    missing or has neither, the features are [] and the model falls back to `platform`.
    """
    model, flags_ = None, set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "hardware", "cpu model") and model is None:
                    model = value.strip()
                elif key in ("flags", "features") and not flags_:
                    flags_ = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown"
    return model, [f for f in CPU_FEATURES if f in flags_]


def model_macs(model) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (formulas in the module docstring).

    Counts Conv2D, DepthwiseConv2D and Dense layers, and those of nested models.
    """
    import math

    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += model_macs(layer)
            continue
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
                                  keras.layers.Dense)):
            continue
        kernel = tuple(int(d) for d in layer.kernel.shape)  # Conv2D: kh, kw, cin / groups, cout
        out = tuple(layer.output.shape[1:])                  # Depthwise: kh, kw, cin, multiplier
        positions = math.prod(int(d) for d in out[:-1])      # Dense: units_in, units_out
        total += positions * math.prod(kernel)
    return int(total)


def calibration_images(image_size, count=16, seed=0, channels=3):
    """Synthetic float32 pixels in [0, 255], with one 0 and one 255 pixel so the int8 input scale
    is the raw-pixel one (scale 1, zero point -128)."""
    import numpy as np

    images = np.random.default_rng(seed).uniform(0, 255, (count, image_size, image_size, channels))
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


def _row(name, model, data, source):
    return {"name": name, "params": _params(model), "macs": model_macs(model), "bytes": data,
            "source": source}


def find_student(kind, image_size, tflite_dir, run_dir):
    """(bytes, source) of `student_<kind>.tflite` taking S x S images: from `tflite_dir`
    ("shipped ..."), else `run_dir` ("run ..."), else (None, None)."""
    for folder, label in ((tflite_dir, "shipped"), (run_dir, "run")):
        path = os.path.join(folder, f"student_{kind}.tflite") if folder else None
        data = _read(path, image_size) if path else None
        if data is not None:
            return data, f"{label} {os.path.relpath(path)}"
    return None, None


def candidates(run_dir, teacher_dir, image_size, tflite_dir=REPO_TFLITE_DIR, teachers=None):
    """[{name, params, macs, bytes (the .tflite), source}]: student int8/float32, teachers
    (default: DEFAULT_TEACHERS), MobileNetV3Small int8/float32."""
    import keras

    from keras_endokd.deploy.convert import probability_model, to_tflite
    from keras_endokd.models.student import build_student
    from keras_endokd.models.teachers import DEFAULT_TEACHERS, build_teacher

    student = _randomize_bn(build_student(NUM_CLASSES, image_size))
    rows = []
    for kind, io in (("int8", "int8"), ("float32", None)):
        data, source = find_student(kind, image_size, tflite_dir, run_dir)
        if data is None:
            rep = calibration_images(image_size) if io else None
            data = to_tflite(probability_model(student), rep, io or "float32", io or "float32")
            source = "untrained, unpruned" + (", per-channel" if io else "")
        rows.append(_row(f"student_{kind}", student, data, source))
    for name in DEFAULT_TEACHERS if teachers is None else teachers:
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
        rows.append(_row(f"{name}_float32", teacher, to_tflite(probability_model(teacher)), source))
    mnv3 = keras.applications.MobileNetV3Small(
        input_shape=(image_size, image_size, 3), weights=None, classes=NUM_CLASSES,
        include_preprocessing=True)  # expects [0, 255]; ends in a softmax already
    int8, float32 = convert_pair(mnv3, calibration_images(image_size))
    rows.append(_row("mobilenetv3small_int8", mnv3, int8, "untrained"))
    rows.append(_row("mobilenetv3small_float32", mnv3, float32, "untrained"))
    return rows


def convert_pair(model, representative):
    """(int8, float32) .tflite bytes of a Keras model from one SavedModel export.

    The int8 model has the settings of `keras_endokd.deploy.convert.to_tflite(model,
    representative, "int8", "int8")` (full-integer, TFLITE_BUILTINS_INT8, per-channel weight
    scales); one export instead of one per conversion halves the time for a large model.
    """
    import contextlib
    import io
    import tempfile
    import warnings

    import numpy as np
    import tensorflow as tf

    images = np.asarray(representative, np.float32)
    with tempfile.TemporaryDirectory() as folder, contextlib.redirect_stdout(io.StringIO()), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        model.export(folder, format="tf_saved_model", verbose=False)
        float32 = tf.lite.TFLiteConverter.from_saved_model(folder).convert()
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
        return converter.convert(), float32


def peak_probe(spatial=32, channels=256):
    """{"macs", "int8", "float32"}: a single 1x1 convolution (one matrix multiply) as .tflite
    bytes, int8 (int8 input and output) and float32, and its MACs per invoke."""
    import keras

    from keras_endokd.deploy.convert import to_tflite

    keras.utils.set_random_seed(0)
    inputs = keras.Input((spatial, spatial, channels))
    model = keras.Model(inputs, keras.layers.Conv2D(channels, 1, use_bias=True)(inputs))
    rep = calibration_images(spatial, count=8, channels=channels)
    return {"macs": model_macs(model), "int8": to_tflite(model, rep, "int8", "int8"),
            "float32": to_tflite(model)}


def _by_name(results, name):
    return next(r for r in results if r["name"] == name)


def benchmark(run_dir="runs/latest", teacher_dir="runs/teachers", image_size=128, runs=200,
              tflite_dir=REPO_TFLITE_DIR, teachers=None, peak_spatial=32, peak_channels=256):
    """Measure, print the tables, and print the JSON summary as the last line; returns it."""
    from keras_endokd.deploy.micro import measure_arena_isolated

    results = candidates(run_dir, teacher_dir, image_size, tflite_dir, teachers)
    peak = peak_probe(peak_spatial, peak_channels)
    warmup = max(5, min(50, runs // 4))
    kinds = ("int8", "float32")
    peak_ms = {kind: latency_ms(peak[kind], 1, runs, warmup) for kind in kinds}
    for r in results:
        r["ms1"], r["ms2"] = (latency_ms(r["bytes"], n, runs, warmup) for n in (1, 2))
    # The peak is the faster of a measurement before and one after the models: a busy machine
    # only ever slows a measurement down.
    peak_ms = {kind: min(peak_ms[kind], latency_ms(peak[kind], 1, runs, warmup)) for kind in kinds}
    peak_gmacs = {kind: peak["macs"] / ms / 1e6 for kind, ms in peak_ms.items()}
    model, features = cpu_info()
    s8, s32 = _by_name(results, "student_int8"), _by_name(results, "student_float32")
    m8, m32 = _by_name(results, "mobilenetv3small_int8"), _by_name(results, "mobilenetv3small_float32")

    print(f"\nCPU: {model}, {os.cpu_count()} cores visible; features: {' '.join(features) or 'unknown'}")
    print(f"LiteRT batch-1 invoke latency at {image_size}x{image_size}: median of {runs} "
          f"invokes after {warmup} warm-up")
    print(f"{'model':<26}{'params':>10}{'MMACs':>8}{'bytes':>11}{'gzip':>10}{'ms 1 thr':>10}"
          f"{'ms 2 thr':>10}{'GMAC/s':>8}{'of peak':>8}  source")
    for r in results:
        gmacs = r["macs"] / r["ms1"] / 1e6
        kind = "int8" if r["name"].endswith("int8") else "float32"
        print(f"{r['name']:<26}{r['params']:>10,}{r['macs'] / 1e6:>8.2f}{len(r['bytes']):>11,}"
              f"{len(gzip.compress(r['bytes'], 9)):>10,}{r['ms1']:>10.3f}{r['ms2']:>10.3f}"
              f"{gmacs:>8.1f}{100 * gmacs / peak_gmacs[kind]:>7.0f}%  {r['source']}")
    for kind in ("int8", "float32"):
        print(f"{'peak probe ' + kind:<26}{'':>10}{peak['macs'] / 1e6:>8.2f}{len(peak[kind]):>11,}"
              f"{'':>10}{peak_ms[kind]:>10.3f}{'':>10}{peak_gmacs[kind]:>8.1f}{100:>7.0f}%  "
              f"1x1 conv {peak_spatial}x{peak_spatial}x{peak_channels} -> {peak_channels}")
    print("(GMAC/s = MACs / 1-thread latency; of peak: share of the peak probe's GMAC/s, same precision)")

    arena = measure_arena_isolated(s8["bytes"])
    arena_bytes = arena["arena_used_bytes"] if arena else None
    print("TFLite Micro arena of student_int8: " + (
        f"{arena_bytes:,} bytes used ({arena_bytes / 1024:.1f} KiB), "
        f"{arena['arena_size_recommended']:,} recommended" if arena else "n/a (no tflite_micro)"))

    speedup = m8["ms1"] / s8["ms1"]
    speedup_fp = m32["ms1"] / s32["ms1"]
    s_best, m_best = min(s8["ms1"], s32["ms1"]), min(m8["ms1"], m32["ms1"])
    speedup_best = m_best / s_best
    mac_ratio = m8["macs"] / s8["macs"]
    best_met = speedup_best >= TARGET_MAC_RATIO_SHARE * mac_ratio
    best_kind = lambda a, b: "int8" if a["ms1"] <= b["ms1"] else "float32"  # noqa: E731
    print(f"Like with like (1 thread): int8 {speedup:.2f}x, float32 {speedup_fp:.2f}x, best of each "
          f"{speedup_best:.2f}x (student {best_kind(s8, s32)} {s_best:.3f} ms vs MobileNetV3Small "
          f"{best_kind(m8, m32)} {m_best:.3f} ms); MACs {s8['macs']:,} vs {m8['macs']:,}: "
          f"{mac_ratio:.2f}x fewer")
    print(f"student_int8 is {len(m8['bytes']) / len(s8['bytes']):.1f}x smaller than MobileNetV3Small "
          f"int8, {s32['ms1'] / s8['ms1']:.2f}x faster and {len(s32['bytes']) / len(s8['bytes']):.1f}x "
          f"smaller than student_float32; 2 threads run it {s8['ms1'] / s8['ms2']:.2f}x faster than 1.")
    share = {r["name"]: r["macs"] / r["ms1"] / 1e6 / peak_gmacs["int8"] for r in (s8, m8)}
    print(f"Efficiency, int8, 1 thread: student {100 * share['student_int8']:.0f}% and "
          f"MobileNetV3Small {100 * share['mobilenetv3small_int8']:.0f}% of the peak probe's "
          f"{peak_gmacs['int8']:.1f} GMAC/s (float32 peak {peak_gmacs['float32']:.1f} GMAC/s)")
    note = "" if image_size == 128 else f" (targets are set at 128x128; this is {image_size})"
    print(f"Target student_int8 < {TARGET_MS:g} ms on 1 thread: "
          f"{'MET' if s8['ms1'] < TARGET_MS else 'NOT MET'} ({s8['ms1']:.3f} ms){note}")
    print(f"Target >= {TARGET_SPEEDUP:g}x faster than MobileNetV3Small int8: "
          f"{'MET' if speedup >= TARGET_SPEEDUP else 'NOT MET'} ({speedup:.2f}x){note}")
    print(f"Check best vs best >= {TARGET_MAC_RATIO_SHARE:g} x MAC ratio ({TARGET_MAC_RATIO_SHARE * mac_ratio:.2f}x): "
          f"{'met' if best_met else 'NOT MET'} ({speedup_best:.2f}x){note}")
    summary = dict(zip(JSON_KEYS, (image_size, round(s8["ms1"], 4), round(m8["ms1"], 4),
                                   round(speedup, 3), len(s8["bytes"]), arena_bytes)))
    summary.update(zip(NEW_JSON_KEYS, (
        s8["macs"], m8["macs"], round(s_best, 4), round(m_best, 4), features, model,
        round(s32["ms1"], 4), round(m32["ms1"], 4), round(speedup_fp, 3), round(speedup_best, 3),
        round(mac_ratio, 3), bool(best_met), s8["source"], round(peak_gmacs["int8"], 2),
        round(peak_gmacs["float32"], 2), round(share["student_int8"], 4),
        round(share["mobilenetv3small_int8"], 4))))
    print(json.dumps(summary), flush=True)
    return summary


def main(argv):
    del argv
    benchmark(FLAGS.run_dir, FLAGS.teacher_dir, FLAGS.image_size, FLAGS.runs, FLAGS.tflite_dir,
              peak_spatial=FLAGS.peak_spatial, peak_channels=FLAGS.peak_channels)


if __name__ == "__main__":
    app.run(main)
