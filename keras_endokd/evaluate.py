"""python -m keras_endokd.evaluate: test-split metrics of a saved student, Keras or TFLite.

    python -m keras_endokd.evaluate --model=runs/latest/student.keras --dataset=synthetic
    python -m keras_endokd.evaluate --model=runs/latest/student_int8.tflite \\
        --dataset=kvasir_v2 --data_dir=/data/kvasir-dataset-v2 --fold=1

Writes metrics.json (as the train command's: {"student": accuracy, macro precision/recall/F1,
MCC, per class, confusion matrix; "dataset": class names and counts}) and confusion_matrix.png
into --output_dir (default: eval_<model file>_<dataset> beside the model). A .tflite model runs
in LiteRT. The split is the one the dataset loader makes with --seed, so use the run's seed
(read from config.json beside the model when there is one).
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags
from keras_endokd.cli import UsageError, fail, parse_flags

FLAGS = flags.FlagValues()
flags.DEFINE_string("model", None, "A .keras student or an exported .tflite model.",
                    flag_values=FLAGS)
flags.DEFINE_string("dataset", None, "synthetic | kvasir_v2 | hyper_kvasir | folder. Default: "
                    "the run's (config.json beside the model).", flag_values=FLAGS)
flags.DEFINE_string("data_dir", None, "Dataset folder (not needed for synthetic).",
                    flag_values=FLAGS)
flags.DEFINE_string("split_file", None, "Hyper-Kvasir official split CSV.", flag_values=FLAGS)
flags.DEFINE_integer("fold", None, "Held-out test fold of k-fold datasets. Default: the run's, "
                     "else 0.", flag_values=FLAGS)
flags.DEFINE_integer("seed", None, "Seed of the dataset split. Default: the run's, else 0.",
                     flag_values=FLAGS)
flags.DEFINE_integer("image_size", None, "Input size; default (and only valid value): the "
                     "model's own.", flag_values=FLAGS)
flags.DEFINE_boolean("crop_border", None, "Crop the black border first. Default: the run's, "
                     "else off.", flag_values=FLAGS)
flags.DEFINE_integer("batch_size", 64, "Batch size of the Keras evaluation.", flag_values=FLAGS)
flags.DEFINE_string("output_dir", None, "Where metrics.json and confusion_matrix.png go.",
                    flag_values=FLAGS)



def _run_config(model_path) -> dict:
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _model_class_names(model_path, model_bytes=None):
    """Class names the model was exported with (TFLite metadata, else labels.txt beside it)."""
    if model_bytes is not None:
        from keras_endokd.deploy.metadata import read_associated_files, read_metadata

        try:
            files = {f["name"] for f in read_metadata(model_bytes)["outputs"][0]["associated_files"]
                     if f["type"] == "TENSOR_AXIS_LABELS"}
        except (ValueError, IndexError):
            files = set()
        for name, data in read_associated_files(model_bytes).items():
            if name in files:
                return [l.strip() for l in data.decode("utf-8").splitlines() if l.strip()]
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "labels.txt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return [l.strip() for l in f if l.strip()]
    return None


def _setting(name, config, default):
    value = getattr(FLAGS, name)
    return value if value is not None else config.get(name, default)


def _data_seed(config) -> int:
    """--seed, else the run's dataset seed (`data_seed`, which defaults to its `seed`), else 0."""
    if FLAGS.seed is None and config.get("data_seed") is not None:
        return config["data_seed"]
    return _setting("seed", config, 0)


def evaluate(model_path) -> dict:
    """Evaluates the model the flags describe; returns metrics.json's content."""
    if not os.path.isfile(model_path):
        raise UsageError(f"--model={model_path}: no such file.")
    if not model_path.endswith((".keras", ".tflite")):
        raise UsageError(f"--model={model_path} must be a .keras student or a .tflite model.")
    config = _run_config(model_path)
    dataset = _setting("dataset", config, None)
    if not dataset:
        raise UsageError("--dataset is required (no config.json beside the model to read it from).")

    import numpy as np

    from keras_endokd import atomic_files
    from keras_endokd.data import load_dataset
    from keras_endokd.data.tf_datasets import make_dataset
    from keras_endokd.classification_metrics import classification_metrics, plot_confusion_matrix

    if model_path.endswith(".tflite"):
        from keras_endokd.deploy.litert import TFLiteModel

        try:
            model = TFLiteModel(model_path)
        except ValueError as err:
            raise UsageError(f"--model={model_path} is not a TFLite model: {err}") from None
        size, num_classes = model.input_size[0], int(model.output_details[0]["shape"][-1])
        model_bytes = model.model_bytes
    else:
        import keras

        import keras_endokd.models  # noqa: F401  (registers the student's layers)

        model = keras.saving.load_model(model_path, safe_mode=True)
        size, num_classes = int(model.input_shape[1]), int(model.output_shape[-1])
        model_bytes = None
    if FLAGS.image_size is not None and FLAGS.image_size != size:
        raise UsageError(f"--image_size={FLAGS.image_size}, but the model takes {size}x{size} "
                         "images (leave the flag out).")
    data_dir = FLAGS.data_dir or (config.get("data_dir") if dataset == config.get("dataset") else None)
    split_file = FLAGS.split_file or (config.get("split_file") if dataset == config.get("dataset") else None)
    source = load_dataset(dataset, data_dir, split_file, _setting("fold", config, 0),
                          _data_seed(config), size)
    if source.num_classes != num_classes:
        raise UsageError(f"the model outputs {num_classes} classes but dataset '{source.name}' "
                         f"has {source.num_classes}: {', '.join(source.class_names)}.")
    names = _model_class_names(model_path, model_bytes)
    if names is not None and list(names) != list(source.class_names):
        raise UsageError(f"the model's classes ({', '.join(names)}) are not dataset "
                         f"'{source.name}''s ({', '.join(source.class_names)}), in that order: "
                         "its outputs would be scored against the wrong labels.")
    crop = bool(_setting("crop_border", config, False))
    stem = os.path.splitext(os.path.basename(model_path))[0]
    out_dir = FLAGS.output_dir or os.path.join(os.path.dirname(os.path.abspath(model_path)),
                                               f"eval_{stem}_{dataset}")
    os.makedirs(out_dir, exist_ok=True)
    test = make_dataset(source.splits["test"], size, FLAGS.batch_size, crop_border=crop)
    if model_path.endswith(".keras"):
        from keras_endokd.student_stage import evaluate_student

        metrics = evaluate_student(model, test, source, out_dir)
    else:
        predictions = np.concatenate([np.argmax(model.predict(x.numpy()), axis=-1)
                                      for x, _ in test] or [np.zeros(0, np.int64)])
        scores = classification_metrics(source.splits["test"].labels, predictions,
                                        source.class_names)
        plot_confusion_matrix(scores["confusion_matrix"], source.class_names,
                              os.path.join(out_dir, "confusion_matrix.png"),
                              title=f"{stem}, test accuracy {scores['accuracy']:.3f}")
        metrics = {"student": scores, "dataset": source.describe()}
    metrics["model"] = {"path": os.path.abspath(model_path), "format": model_path.rsplit(".", 1)[1],
                        "image_size": size, "crop_border": crop}
    atomic_files.write_json(os.path.join(out_dir, "metrics.json"), metrics)
    s = metrics["student"]
    print(f"[keras-endokd] {model_path} on {source.name} test ({s['num_images']} images): accuracy "
          f"{s['accuracy']:.3f}, macro F1 {s['macro_f1']:.3f}, MCC {s['mcc']:.3f} -> {out_dir}")
    return metrics


def main(argv=None) -> int:
    _, code = parse_flags(FLAGS, argv, __doc__)
    if code is not None:
        return code
    from keras_endokd.data.source import DatasetLayoutError

    try:
        if not FLAGS.model:
            raise UsageError("--model is required: a .keras student or a .tflite model.")
        evaluate(FLAGS.model)
    except (UsageError, DatasetLayoutError, FileNotFoundError) as err:
        return fail(err)
    except ValueError as err:  # load_dataset's own checks (unknown dataset, missing --data_dir)
        return fail(err)
    return 0



if __name__ == "__main__":
    sys.exit(main())
