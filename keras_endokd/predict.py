"""python -m keras_endokd.predict: classify image files with a saved student, Keras or TFLite.

    python -m keras_endokd.predict --model=runs/latest/student.keras frame1.jpg frame2.png
    python -m keras_endokd.predict --model=runs/latest/student_int8.tflite frames/*.jpg

Prints one JSON line per image: {"image": path, "top3": [{"class": name, "probability": p}, ...]}
(an image that cannot be read gives {"image": path, "error": why}, the others go on, and the
exit code is 1). A line also carries "warnings" when the input is degenerate (a tiny frame,
upscaled many times; a constant one, which holds nothing to classify), and "caution" on every
line when the model was trained on the embedded synthetic images (its model card, run files or
metadata say so): such a model is a demonstration and says nothing about real frames.

Each line carries "ood": the out-of-distribution score (the top-1 probability, MSP, Hendrycks and
Gimpel 2017), the threshold calibrated on the validation split (the model card of an exported
model, metrics.json beside a .keras student) and "flagged": true when the frame scores below it,
unlike the frames the model learned from. A .keras student applies the temperature fitted on the
validation split (metrics.json's calibration), as the exported models have it folded in.
--explain=DIR writes a Grad-CAM overlay (Selvaraju et al. 2017) of the top-1 class per image.

Images of any size and format that TensorFlow decodes (JPEG, PNG, GIF, BMP, WebP) go
through THE training preprocessing (`keras_endokd.data.tf_datasets`): decode, optional black-border
crop, antialiased resize to the model's input size. Both model kinds see the same pixels.

Class names: the .tflite metadata, else labels.txt beside the model, else --labels, else the
class names in metrics.json beside the model, else class_0..class_N.
Black-border crop: --crop_border when given, else the run's config.json beside the model, else off.
"""

from __future__ import annotations

import json
import os
import re
import sys

from absl import flags
from keras_endokd.cli import UsageError, fail, parse_flags

FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "A .keras student or one of the exported .tflite models.",
                    flag_values=FLAGS)
flags.DEFINE_string("labels", None, "Class names file, one per line (used when the model has no "
                    "metadata and no labels.txt lies beside it).", flag_values=FLAGS)
flags.DEFINE_boolean("crop_border", None, "Crop the endoscope's black border before resizing. "
                     "Default: as the run was trained (config.json beside the model), else off.",
                     flag_values=FLAGS)
flags.DEFINE_integer("top_k", 3, "How many classes to print per image.", flag_values=FLAGS)
flags.DEFINE_string("explain", None, "Folder to write a Grad-CAM overlay PNG per image into "
                    "(<image name>_gradcam.png; .keras students only).", flag_values=FLAGS)



def _read_lines(path) -> list:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _beside(model_path, name) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(model_path)), name)


def _read_beside(model_path, name) -> dict:
    """The JSON file `name` of the run folder holding the model; {} when there is none."""
    path = _beside(model_path, name)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _metadata_labels(model_bytes):
    from keras_endokd.deploy.metadata import read_associated_files, read_metadata

    try:
        outputs = read_metadata(model_bytes)["outputs"]
    except ValueError:  # no metadata
        return None
    files = read_associated_files(model_bytes)
    for f in outputs[0]["associated_files"] if outputs else []:
        if f["type"] == "TENSOR_AXIS_LABELS" and f["name"] in files:
            return [l.strip() for l in files[f["name"]].decode("utf-8").splitlines() if l.strip()]
    return None


def ood_threshold(model_path):
    """(method, threshold) for this model file: its entry in the model card beside an exported
    model, metrics.json's `ood` beside a .keras student; (msp, None) when neither has one."""
    if model_path.endswith(".tflite"):
        entry = (_read_beside(model_path, "model_card.json").get("ood") or {}).get(os.path.basename(model_path))
    else:
        entry = _read_beside(model_path, "metrics.json").get("ood")
    if entry and entry.get("method") == "msp":
        return "msp", float(entry["threshold"])
    return "msp", None


def class_names(model_path, num_classes, model_bytes=None, labels_flag=None) -> list:
    """The model's class names (see the module docstring for where they come from)."""
    candidates = []
    if model_bytes is not None:
        candidates.append(("the model's metadata", lambda: _metadata_labels(model_bytes)))
    beside = _beside(model_path, "labels.txt")
    candidates.append((beside, lambda: _read_lines(beside) if os.path.isfile(beside) else None))
    if labels_flag:
        if not os.path.isfile(labels_flag):
            raise UsageError(f"--labels={labels_flag}: no such file.")
        candidates.append((labels_flag, lambda: _read_lines(labels_flag)))
    candidates.append((_beside(model_path, "metrics.json"),
                       lambda: _read_beside(model_path, "metrics.json").get("student", {}).get("class_names")))
    for where, read in candidates:
        names = read()
        if names is None:
            continue
        if len(names) != num_classes:
            raise UsageError(f"{where} names {len(names)} classes but the model outputs "
                             f"{num_classes}.")
        return list(names)
    return [f"class_{i}" for i in range(num_classes)]


class Predictor:
    """A .keras or .tflite student: `probabilities(image uint8 [S, S, 3]) -> float [C]`."""

    def __init__(self, path):
        if not os.path.isfile(path):
            raise UsageError(f"--model={path}: no such file.")
        self.path = path
        self.model_bytes = None
        if path.endswith(".tflite"):
            from keras_endokd.deploy.litert import TFLiteModel

            try:
                self.model = TFLiteModel(path)
            except ValueError as err:
                raise UsageError(f"--model={path} is not a TFLite model: {err}") from None
            self.model_bytes = self.model.model_bytes
            height, width = self.model.input_size
            self.num_classes = int(self.model.output_details[0]["shape"][-1])
            self._run = lambda x: self.model.predict(x)[0]
        elif path.endswith(".keras"):
            import keras

            import keras_endokd.models  # noqa: F401  (registers the student's layers)

            try:
                self.model = keras.saving.load_model(path, safe_mode=True)
            except (ValueError, TypeError, OSError) as err:  # incl. code safe_mode refused to run
                raise UsageError(f"--model={path} cannot be loaded as a Keras model: {err}") from None
            height, width = self.model.input_shape[1:3]
            self.num_classes = int(self.model.output_shape[-1])
            outputs_probabilities = isinstance(self.model.layers[-1], keras.layers.Softmax)
            # The temperature fitted on the validation split, as the exported models fold it in.
            temperature = float((_read_beside(path, "metrics.json").get("calibration") or {})
                                .get("temperature", 1.0))

            def run(x):
                y = self.model(x, training=False)
                return keras.ops.convert_to_numpy(y if outputs_probabilities
                                                  else keras.ops.softmax(y / temperature, axis=-1))[0]

            self._run = run
        else:
            raise UsageError(f"--model={path} must be a .keras student or a .tflite model.")
        if height != width:
            raise UsageError(f"--model={path} takes {height}x{width} images; the students are square.")
        self.image_size = int(height)

    def probabilities(self, image):
        import numpy as np

        return self._run(np.asarray(image, np.float32)[None])


# Below these, an input is degenerate: a side under MIN_SIDE pixels (or upscaled more than
# MAX_UPSCALE times to the model's input), or pixel values spread less than CONSTANT_STD (0-255).
MIN_SIDE, MAX_UPSCALE, CONSTANT_STD = 32, 8, 2.0
SYNTHETIC_CAUTION = ("this model was trained on keras-endokd's synthetic images, not on real "
                     "endoscopy: a demonstration, not for any clinical use")


def input_warnings(decoded, image_size: int) -> list:
    """Why a decoded uint8 image [H, W, 3] is a poor input to a `image_size` model (may be [])."""
    import numpy as np

    height, width = int(decoded.shape[0]), int(decoded.shape[1])
    found = []
    if min(height, width) < MIN_SIDE or image_size / min(height, width) > MAX_UPSCALE:
        found.append(f"tiny image ({width}x{height} pixels), upscaled to {image_size}x{image_size}: "
                     "the model sees almost no detail")
    spread = np.asarray(decoded, np.float32).reshape(-1, decoded.shape[-1]).std(axis=0)  # per channel
    if float(spread.max()) < CONSTANT_STD:
        found.append("constant image (every pixel about the same colour): there is nothing to classify")
    return found


def trained_on_synthetic(model_path, model_bytes=None) -> bool:
    """Whether the model card, the run's config or the .tflite metadata says synthetic training data."""
    dataset = _read_beside(model_path, "model_card.json").get("dataset") or {}
    if isinstance(dataset, dict) and "synthetic" in dataset:
        return bool(dataset["synthetic"])
    config = _read_beside(model_path, "config.json")
    if "dataset" in config:
        return config["dataset"] == "synthetic"
    if model_bytes:
        from keras_endokd.deploy.metadata import read_metadata

        try:
            return "SYNTHETIC" in (read_metadata(model_bytes).get("description") or "")
        except ValueError:  # no metadata
            return False
    return False


def load_image(path, image_size, crop_border, details: bool = False):
    """THE preprocessing of a file: uint8 [S, S, 3]; ValueError naming the file if unreadable.

    With `details`, returns (pixels, `input_warnings` of the decoded file).
    """
    import tensorflow as tf

    from keras_endokd.data.tf_datasets import decode_image, preprocess_image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"cannot read the file ({err.strerror or err})") from None
    if not data:
        raise ValueError("empty file (0 bytes)")
    try:
        decoded = decode_image(tf.constant(data))
        pixels = preprocess_image(decoded, image_size, crop_border).numpy()
        return (pixels, input_warnings(decoded.numpy(), image_size)) if details else pixels
    except tf.errors.OpError as err:
        # TensorFlow's message, without the "{{function_node ...}}" prefix and "[Op:...]" suffix.
        why = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*$", "", err.message.splitlines()[0]).strip()
        raise ValueError(f"not an image TensorFlow can decode: {why}") from None


def explain(model, image, path: str, folder: str) -> str:
    """Writes `<folder>/<image name>_gradcam.png`, the Grad-CAM of the top-1 class; its path."""
    from keras_endokd.clinical.gradcam import gradcam, save_overlay

    stem = os.path.splitext(os.path.basename(path))[0]
    return save_overlay(os.path.join(folder, f"{stem}_gradcam.png"), image, gradcam(model, image[None])[0])


def main(argv=None) -> int:
    images, code = parse_flags(FLAGS, argv, __doc__, positional=True)
    if code is not None:
        return code
    try:
        if not FLAGS.model:
            raise UsageError("--model is required: a .keras student or a .tflite model.")
        if not images:
            raise UsageError("give at least one image file after the flags.")
        if FLAGS.top_k < 1:
            raise UsageError(f"--top_k must be at least 1, got {FLAGS.top_k}.")
        if FLAGS.explain and not FLAGS.model.endswith(".keras"):
            raise UsageError(f"--explain needs a .keras student (Grad-CAM reads its gradients), not "
                             f"--model={FLAGS.model}.")
        if FLAGS.explain and os.path.isfile(FLAGS.explain):
            raise UsageError(f"--explain={FLAGS.explain} is a file; give a folder to write the overlays into.")
        predictor = Predictor(FLAGS.model)
        names = class_names(FLAGS.model, predictor.num_classes, predictor.model_bytes,
                            FLAGS.labels)
    except UsageError as err:
        return fail(err)
    trained_crop = _read_beside(FLAGS.model, "config.json").get("crop_border")
    crop = FLAGS.crop_border if FLAGS.crop_border is not None else bool(trained_crop)
    if FLAGS.crop_border is not None and trained_crop is not None and crop != trained_crop:
        print(f"warning: --crop_border={crop} but the model was trained with "
              f"crop_border={trained_crop}", file=sys.stderr)
    ood_method, threshold = ood_threshold(FLAGS.model)
    if FLAGS.explain:
        os.makedirs(FLAGS.explain, exist_ok=True)
    caution = SYNTHETIC_CAUTION if trained_on_synthetic(FLAGS.model, predictor.model_bytes) else None
    if caution:
        print(f"caution: {caution}", file=sys.stderr)
    failures = 0
    for path in images:
        try:
            image, warnings = load_image(path, predictor.image_size, crop, details=True)
        except ValueError as err:
            failures += 1
            print(f"error: {path}: {err}", file=sys.stderr)
            print(json.dumps({"image": path, "error": str(err)}), flush=True)
            continue
        p = predictor.probabilities(image)
        order = sorted(range(len(p)), key=lambda i: -float(p[i]))[:FLAGS.top_k]
        top = [{"class": names[i], "probability": round(float(p[i]), 6)} for i in order]
        score = float(max(p))
        line = {"image": path, f"top{FLAGS.top_k}": top,
                "ood": {"method": ood_method, "score": round(score, 6), "threshold": threshold,
                        "flagged": None if threshold is None else score < threshold}}
        if FLAGS.explain:
            line["explanation"] = explain(predictor.model, image, path, FLAGS.explain)
        if warnings:
            line["warnings"] = warnings
        if caution:
            line["caution"] = caution
        print(json.dumps(line), flush=True)
    return 1 if failures else 0



if __name__ == "__main__":
    sys.exit(main())
