"""The checks every converted model passes before the export writes it, and the figures they give.

Each `.tflite` runs in LiteRT (`deploy.litert`, the default XNNPACK delegate: what an Android app
runs) and must

- agree on top-1 with the Keras model it was converted from. Agreement needs no labels, so it is
  measured on up to 1,024 images drawn from all three splits (`export_images.agreement_images`),
  not on the test split alone. An 8-bit softmax resolves probabilities to 1/256, so a tie of the
  integer output counts as agreeing when the Keras class is among the tied ones (`agreement`);
  plain-argmax agreement is reported beside it. With k of n images agreeing, the Wilson score
  95% interval (Wilson 1927, "Probable inference, the law of succession, and statistical
  inference") of the agreement is reported, and the model fails only when the interval's upper
  bound is below `min_agreement`: the data must show that the model agrees less than asked,
  which a handful of images cannot (1 disagreement among 46 images passes 0.99: upper bound
  99.6%; among 1,024 images, 0.99 fails 17 or more disagreements, 98.3% agreement);
- use builtin operators only, and the int8 model only operators TensorFlow Lite Micro has
  kernels for (`deploy.micro.TFLM_BUILTIN_OPS`);
- take int8 (microcontroller) or uint8 (Android) pixels and, for the int8 model, give int8 out.

Accuracy, F1 and MCC of every model are measured on the test split (they need labels).
"""

from __future__ import annotations

import math

import numpy as np

from keras_endokd.classification_metrics import classification_metrics
from keras_endokd.clinical.calibration import expected_calibration_error, softmax
from keras_endokd.clinical.probability_metrics import add_probability_metrics
from keras_endokd.deploy import micro
from keras_endokd.deploy.litert import TFLiteModel, op_names, tensor_types

TFLITE_FILES = {"float32": "student_float32.tflite", "int8": "student_int8.tflite",
                "android": "student_android.tflite"}
# The project's target for the int8 model at 128x128: its remaining disagreements with the float
# model are images the float model scores as near ties (docs/deployment.md).
DEFAULT_MIN_AGREEMENT = 0.99
Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile
RULE = ("a model fails when the upper bound of the Wilson score 95% interval of its top-1 "
        "agreement (ties of the 8-bit output counted as agreeing) is below min_agreement")


class ExportCheckError(RuntimeError):
    """A converted model failed a deployment check (agreement, operators, input quantization)."""


def inference(model):
    """A Keras 3 or tf_keras model as a function of one chunk (no `predict`: it retraces per call)."""
    return lambda x: model(x, training=False)


def batched(predict, images, size: int = 64) -> np.ndarray:
    """`predict` over uint8 images [N, S, S, 3] in float32 chunks of `size`: [N, C].

    Chunks, because a whole split in float32 can be 1 GB, and small ones, because an eager Keras
    call holds every activation of its chunk at once and the process keeps that memory: at
    128x128, chunks of 256 images cost the export about 0.7 GiB more peak memory than chunks of
    64, at the same speed."""
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


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple:
    """(lower, upper) Wilson score interval of a proportion successes / n; (0, 1) when n = 0.

        centre = (p + z^2 / 2n) / (1 + z^2 / n)
        half   = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n),   p = successes / n

    Unlike the normal approximation p +- z sqrt(p (1 - p) / n), it does not collapse to one point
    when every image agrees, and it stays within [0, 1].
    """
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return lower, upper


def agreement_fails(agreeing: int, n: int, min_agreement: float) -> bool:
    """The rule (`RULE`): True when even the interval's upper bound is below `min_agreement`."""
    return wilson_interval(agreeing, n)[1] < min_agreement


def passing_min_agreement(upper_bounds) -> float:
    """The largest two-decimal threshold that every one of these upper bounds passes."""
    lowest = min(upper_bounds)
    threshold = round(math.floor(round(lowest * 100, 9)) / 100, 2)  # 0.57 * 100 = 56.999...
    while threshold > lowest:
        threshold = round(threshold - 0.01, 2)
    return max(threshold, 0.0)


def _agreement_entry(probabilities, reference, keras_top1) -> dict:
    """Agreement figures of one model's probabilities [n, C] against reference top-1 [n]."""
    n = len(reference)
    ties = probabilities == probabilities.max(-1, keepdims=True)
    agreeing = int(np.sum(ties[np.arange(n), reference]))
    lower, upper = wilson_interval(agreeing, n)
    return {"agreement": agreeing / n if n else float("nan"),
            "agreement_strict": float(np.mean(top1(probabilities) == reference)),
            "agreement_images": n, "disagreements": n - agreeing,
            "agreement_interval_95": [lower, upper],
            "agreement_with_keras_pruned": agreement(probabilities, keras_top1),
            "tied_top1": int(np.sum(np.sum(ties, axis=-1) > 1))}


def check_models(models: dict, pruned, student, qat_model, test, agreement_images,
                 class_names, min_agreement: float, temperature: float = 1.0) -> tuple:
    """Runs every check on `models` ({"float32" | "int8" | "android": .tflite bytes}).

    Args:
      pruned, student: the Keras 3 models (logits out) the float32 model, and without QAT the
        integer models, were converted from (`pruned`), and the student before pruning.
      qat_model: the tf_keras QAT model the integer models were converted from, or None.
      test: the test split with its images in memory (uint8 [N, S, S, 3]): accuracy and scores.
      agreement_images: uint8 [n, S, S, 3], the images agreement is measured on.
      temperature: the one folded into `pruned` (and the .tflite models): each model's
        probability metrics (ECE, Brier, ROC/PR-AUC) are reported as shipped, and
        `ece_without_temperature` from softmax(T log p), what the model gave before the fold
        (exact for float outputs; for 8-bit outputs an estimate).

    Returns (checks, failures, suggested_min_agreement): checks maps each model to its test
    scores (and, for the .tflite models, its agreement figures); failures holds one line per
    failed check; suggested_min_agreement is the largest two-decimal threshold at which every
    model passes the agreement rule, or None when none failed it.
    """
    n_test = len(test)
    images = np.concatenate([test.images, agreement_images])

    def run(predict):  # -> (test outputs, agreement-image outputs)
        outputs = batched(predict, images)
        return outputs[:n_test], outputs[n_test:]

    labels = test.labels
    student_test, _ = run(inference(student))
    pruned_test, pruned_agreement = run(inference(pruned))
    keras_top1 = top1(pruned_agreement)
    checks = {"keras_student": add_probability_metrics(scores(labels, top1(student_test), class_names),
                                                       softmax(student_test), labels, class_names),
              "keras_pruned": add_probability_metrics(scores(labels, top1(pruned_test), class_names),
                                                      softmax(pruned_test), labels, class_names)}
    qat_top1 = None
    if qat_model is not None:
        qat_test, qat_agreement = run(inference(qat_model))
        qat_top1 = top1(qat_agreement)
        checks["qat"] = scores(labels, top1(qat_test), class_names)
    failures, upper_bounds, failed = [], [], False
    for key, data in models.items():
        test_probabilities, probabilities = run(TFLiteModel(data).predict)
        use_qat = qat_top1 is not None and key != "float32"
        entry = add_probability_metrics(scores(labels, top1(test_probabilities), class_names),
                                        test_probabilities, labels, class_names)
        entry["ece_without_temperature"] = expected_calibration_error(
            softmax(temperature * np.log(np.clip(test_probabilities, 1e-7, 1.0))), labels)
        entry.update(_agreement_entry(probabilities, qat_top1 if use_qat else keras_top1,
                                      keras_top1))
        entry["agreement_with"] = "qat" if use_qat else "keras_pruned"
        checks[key] = entry
        lower, upper = entry["agreement_interval_95"]
        upper_bounds.append(upper)
        n = entry["agreement_images"]
        if agreement_fails(n - entry["disagreements"], n, min_agreement):
            failed = True
            failures.append(
                f"{TFLITE_FILES[key]} agrees with its Keras model on {entry['agreement']:.2%} of "
                f"{entry['agreement_images']} images ({entry['disagreements']} disagree; 95% "
                f"interval {lower:.2%} to {upper:.2%}): even the upper bound is below "
                f"--min_agreement={min_agreement:g}")
    failures += operator_failures(models)
    return checks, failures, passing_min_agreement(upper_bounds) if failed else None


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
