"""python -m experiments.build_reference: refresh tflite/ and android_demo_assets/ from the default job.

    python -m experiments.build_reference [--run_dir=runs/latest]

If the run folder holds no exported student, it first runs the main job there
(`python -m keras_endokd.train --kd=relation --output_dir=RUN_DIR`). Then it copies the
microcontroller files into `tflite/` and the Android files into `android_demo_assets/`, renders a
few synthetic sample frames (at 256x256, so the app's resize is exercised), records each one's
expected top-1 as computed by `keras_endokd.predict` on the Android model, and writes both READMEs'
figure tables from the run's model card and export report.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", "runs/latest", "Run folder of the default job (created if needed).")
flags.DEFINE_integer("samples_per_class", 2, "Sample frames per class in android_demo_assets/samples.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGMAX_KEY = "agreement_strict"
TFLITE_FILES = ("student_int8.tflite", "model_data.cc", "model_data.h", "micro_op_resolver.h",
                "labels.txt", "model_card.json", "export_report.json")
ANDROID_FILES = ("student_android.tflite", "labels.txt")


def _copy(run_dir, names, dest):
    os.makedirs(dest, exist_ok=True)
    for name in names:
        shutil.copyfile(os.path.join(run_dir, name), os.path.join(dest, name))


def _samples(dest, per_class) -> list:
    """Synthetic test-split frames as JPEGs, with the Android model's top-1 on each."""
    import numpy as np
    from PIL import Image

    from keras_endokd.data import synthetic
    from keras_endokd.predict import Predictor, load_image

    folder = os.path.join(dest, "samples")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    labels = np.repeat(np.arange(len(synthetic.CLASS_NAMES)), per_class)
    images = synthetic.generate(labels, 256, seed=0, split="test")
    model = Predictor(os.path.join(dest, "student_android.tflite"))
    rows = []
    for i, (label, image) in enumerate(zip(labels, images)):
        name = f"{synthetic.CLASS_NAMES[label]}_{i % per_class}.jpg"
        path = os.path.join(folder, name)
        Image.fromarray(image).save(path, quality=95)
        p = model.probabilities(load_image(path, model.image_size, False))
        rows.append({"file": f"samples/{name}", "true_class": synthetic.CLASS_NAMES[label],
                     "expected_top1": synthetic.CLASS_NAMES[int(np.argmax(p))],
                     "probability": round(float(np.max(p)), 4)})
    with open(os.path.join(dest, "samples.json"), "w") as f:
        json.dump(rows, f, indent=2)
    return rows


def _figures(card: dict, report: dict) -> str:
    files = card["files"]
    checks = report["checks"]
    micro = report["micro"]
    rows = ["| model | bytes | gzip bytes | test accuracy | agreement with Keras (strict argmax) |", "|---|---|---|---|---|"]
    for kind in ("int8", "android", "float32"):
        name = f"student_{kind}.tflite"
        c = checks[kind]
        rows.append(f"| `{name}` | {files[name]['bytes']:,} | {files[name]['gzip_bytes']:,} | "
                    f"{c['accuracy']:.3f} | {c['agreement']:.1%} ({c[ARGMAX_KEY]:.1%}) |")
    rows += ["", f"- Keras student before pruning: test accuracy {checks['keras_student']['accuracy']:.3f}; "
             f"after pruning {checks['keras_pruned']['accuracy']:.3f}.",
             f"- Operations: {', '.join(micro.get('ops', []))}.",
             f"- Weight scales of the int8 model: {report['conversion']['weight_scales']}"
             + (f" (per channel: {', '.join(report['conversion']['int8_weight_scales']['per_channel_layers'])})."
                if report['conversion'].get('int8_weight_scales', {}).get('per_channel_layers') else "."),
             f"- TensorFlow Lite Micro arena: {micro.get('arena_used_bytes', 'not measured')} bytes used, "
             f"{micro.get('arena_size_recommended', '-')} recommended (target 262,144: "
             f"{'met' if micro.get('arena_target_met') else 'not met'}); int8 model target 64,000 bytes: "
             f"{'met' if micro.get('model_target_met') else PER_TENSOR_HINT}.",
             f"- Trainable parameters: {card['trainable_params']:,}; sparsity of all kernels "
             f"{card['sparsity']['all_kernels']:.1%}.",
             f"- Produced by `{report['command']}` then `python -m experiments.build_reference`."]
    return "\n".join(rows)


PER_TENSOR_HINT = ("NOT met (`python -m keras_endokd.export --run_dir=runs/latest "
                   "--int8_max_bytes=64000` keeps per-channel weight scales only where they fit; "
                   "see the project README)")


def _write_readme(path, text):
    with open(path, "w") as f:
        f.write(text)


def main(argv):
    del argv
    run_dir = FLAGS.run_dir
    if not os.path.isfile(os.path.join(run_dir, "export_report.json")):
        subprocess.run([sys.executable, "-m", "keras_endokd.train", "--kd=relation", "--overwrite",
                        f"--output_dir={run_dir}"], check=True, cwd=REPO)
    with open(os.path.join(run_dir, "model_card.json")) as f:
        card = json.load(f)
    with open(os.path.join(run_dir, "export_report.json")) as f:
        report = json.load(f)
    figures = _figures(card, report)
    tflite_dir, android_dir = os.path.join(REPO, "tflite"), os.path.join(REPO, "android_demo_assets")
    _copy(run_dir, TFLITE_FILES, tflite_dir)
    _copy(run_dir, ANDROID_FILES, android_dir)
    rows = _samples(android_dir, FLAGS.samples_per_class)
    for folder, template in ((tflite_dir, "README.template.md"), (android_dir, "README.template.md")):
        with open(os.path.join(folder, template)) as f:
            text = f.read()
        samples = "\n".join(f"| `{r['file']}` | {r['true_class']} | {r['expected_top1']} | {r['probability']:.3f} |"
                            for r in rows)
        _write_readme(os.path.join(folder, "README.md"),
                      text.replace("{{FIGURES}}", figures).replace("{{SAMPLES}}", samples))
    print(f"refreshed {tflite_dir} and {android_dir} from {run_dir}")


if __name__ == "__main__":
    from keras_endokd.console import quiet_native_logs

    quiet_native_logs()  # before absl parses the flags and anything imports TensorFlow
    app.run(main)
