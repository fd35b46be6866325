"""The checks every converted model passes before the export writes it, and the figures they give.

Each `.tflite` runs in LiteRT (`deploy.litert`, the default XNNPACK delegate: what an Android app
runs) and must

- agree on top-1 with the Keras model it was converted from, on at least `min_agreement` of the
  test images. An 8-bit softmax resolves probabilities to 1/256, so a tie of the integer output
  counts as agreeing when the Keras class is among the tied ones (`agreement`); plain-argmax
  agreement is reported beside it;
- use builtin operators only, and the int8 model only operators TensorFlow Lite Micro has
  kernels for (`deploy.micro.TFLM_BUILTIN_OPS`);
- take int8 (microcontroller) or uint8 (Android) pixels and, for the int8 model, give int8 out.

A failed check raises `ExportCheckError`, naming each model that failed and why.
"""

from __future__ import annotations

import numpy as np

from keras_endokd.classification_metrics import classification_metrics
from keras_endokd.deploy import micro
from keras_endokd.deploy.litert import TFLiteModel, op_names, tensor_types

TFLITE_FILES = {"float32": "student_float32.tflite", "int8": "student_int8.tflite",
                "android": "student_android.tflite"}
# The project's target for the int8 model at 128x128: its remaining disagreements with the float
# model are images the float model scores as near ties (docs/deployment.md).
DEFAULT_MIN_AGREEMENT = 0.99


class ExportCheckError(RuntimeError):
    """A converted model failed a deployment check (agreement, operators, input quantization)."""


def inference(model):
    """A Keras 3 or tf_keras model as a function of one chunk (no `predict`: it retraces per call)."""
    return lambda x: model(x, training=False)


def batched(predict, images, size: int = 256) -> np.ndarray:
    """`predict` over uint8 images [N, S, S, 3] in float32 chunks of `size`: [N, C].

    Chunks, because a whole split in float32 can be 1 GB."""
    return np.concatenate([np.asarray(predict(images[i:i + size].astype(np.float32)))
                           for i in range(0, len(images), size)])


def top1(probabilities) -> np.ndarray:
    return np.argmax(np.asarray(probabilities), axis=-1)


def agreement(probabilities, reference_top1) -> float:
    """Share of images whose reference class has the model's highest probability, ties included.

    An 8-bit softmax resolves probabilities to 1/256: two classes within that of each other
    come out equal, and an argmax then picks the lower index whatever the float model said.
    Such a tie is no disagreement of the model, so it counts as agreeing; `agreement_strict`
    (plain argmax) is reported beside it.
    """
    probabilities = np.asarray(probabilities)
    chosen = probabilities[np.arange(len(probabilities)), reference_top1]
    return float(np.mean(chosen >= probabilities.max(axis=-1)))


def scores(labels, predictions, class_names) -> dict:
    s = classification_metrics(labels, predictions, class_names)
    return {k: s[k] for k in ("num_images", "accuracy", "macro_f1", "mcc", "macro_precision",
                              "macro_recall", "confusion_matrix")}


def check_models(models: dict, pruned, student, qat_model, test, class_names,
                 min_agreement: float) -> dict:
    """Runs every check on `models` ({"float32" | "int8" | "android": .tflite bytes}).

    Args:
      pruned, student: the Keras 3 models (logits out) the float32 model, and without QAT the
        integer models, were converted from (`pruned`), and the student before pruning.
      qat_model: the tf_keras QAT model the integer models were converted from, or None.
      test: the test split with its images in memory (uint8 [N, S, S, 3]).

    Returns {model: scores on the test split (+ agreement figures for the .tflite models)}.
    Raises ExportCheckError naming every failed check.
    """
    images, labels = test.images, test.labels
    keras_top1 = top1(batched(inference(pruned), images))
    checks = {"keras_student": scores(labels, top1(batched(inference(student), images)),
                                      class_names),
              "keras_pruned": scores(labels, keras_top1, class_names)}
    qat_top1 = None
    if qat_model is not None:
        qat_top1 = top1(batched(inference(qat_model), images))
        checks["qat"] = scores(labels, qat_top1, class_names)
    failures = []
    for key, data in models.items():
        probabilities = batched(TFLiteModel(data).predict, images)
        model_top1 = top1(probabilities)
        reference = qat_top1 if qat_top1 is not None and key != "float32" else keras_top1
        entry = scores(labels, model_top1, class_names)
        entry["agreement"] = agreement(probabilities, reference)
        entry["agreement_strict"] = float(np.mean(model_top1 == reference))
        entry["agreement_with"] = "qat" if reference is qat_top1 else "keras_pruned"
        entry["agreement_with_keras_pruned"] = agreement(probabilities, keras_top1)
        entry["tied_top1"] = int(np.sum(np.sum(probabilities == probabilities.max(-1, keepdims=True),
                                               axis=-1) > 1))
        checks[key] = entry
        if entry["agreement"] < min_agreement:
            failures.append(f"{TFLITE_FILES[key]} agrees with its Keras model on "
                            f"{entry['agreement']:.2%} of {len(model_top1)} test images "
                            f"(minimum {min_agreement:.0%})")
    failures += operator_failures(models)
    if failures:
        raise ExportCheckError("export check failed: " + "; ".join(failures))
    return checks


def operator_failures(models: dict) -> list:
    """One line per model whose operators or tensor types a device cannot run."""
    failures = []
    for key, data in models.items():
        custom = [op for op in op_names(data) if op.startswith("CUSTOM") or "FLEX" in op]
        if custom:
            failures.append(f"{TFLITE_FILES[key]} needs non-builtin operators {custom}")
    unsupported = micro.unsupported_micro_ops(models["int8"])
    if unsupported:
        failures.append(f"student_int8.tflite uses {unsupported}, which TensorFlow Lite Micro "
                        "has no kernels for")
    types = tensor_types(models["int8"])
    if types != {"inputs": ["int8"], "outputs": ["int8"]}:
        failures.append(f"student_int8.tflite has tensor types {types}, expected int8 in and out")
    types = tensor_types(models["android"])
    if types["inputs"] != ["uint8"]:
        failures.append(f"student_android.tflite takes {types['inputs']}, expected uint8")
    return failures
