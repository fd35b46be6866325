"""The exported models' calibration: the temperature folded in, and each file's figures.

Guo et al. 2017 ("On Calibration of Modern Neural Networks"): one temperature T, fitted on the
validation split's logits of the pruned student, scales the logits; folding it into the last
Dense layer (kernel / T, bias / T) makes every converted model give calibrated probabilities with
no new operator (`clinical.calibration.fold_temperature`). Each converted model then gets its
reliability diagram on the test split and its own out-of-distribution threshold (the 5% quantile
of its validation top-1 probabilities, `clinical.ood`), since an 8-bit output moves the scores.
"""

from __future__ import annotations

import os

from keras_endokd.clinical.calibration import (MIN_FIT_IMAGES, fit_temperature, fold_temperature,
                                               negative_log_likelihood, reliability_diagram, softmax)
from keras_endokd.clinical.ood import DEFAULT_QUANTILE, calibrate_threshold, ood_card, ood_score
from keras_endokd.deploy.export_checks import TFLITE_FILES, batched, inference
from keras_endokd.deploy.litert import TFLiteModel


def calibrate(pruned, val, qat: bool):
    """(export_report's "calibration" entry, the model to convert): `pruned` with the temperature
    fitted on the validation logits folded into its last layer (Guo et al. 2017), so the shipped
    models give calibrated probabilities at no cost. Not with QAT: the integer models come from
    the QAT twin, whose fake-quantized last layer a scaling would not reach."""
    logits = batched(inference(pruned), val.images)
    t = fit_temperature(logits, val.labels)
    entry = {"fitted_on": f"the validation split ({len(val)} images), the pruned model's logits"
             + ("" if len(val) >= MIN_FIT_IMAGES else f": too few to fit (under {MIN_FIT_IMAGES}), T = 1"),
             "val_nll_before": negative_log_likelihood(softmax(logits), val.labels),
             "val_nll_after": negative_log_likelihood(softmax(logits, t), val.labels)}
    if qat:
        return {**entry, "temperature": 1.0, "fitted_temperature": t,
                "folded": "no: the integer models are converted from the QAT model"}, pruned
    return {**entry, "temperature": t, "folded": "into the logits layer's kernel and bias"}, \
        fold_temperature(pruned, t)


def calibration_files(out_dir, models: dict, val, test) -> tuple:
    """Each model's reliability diagram (test split) and its out-of-distribution threshold,
    calibrated on its own validation probabilities (an int8 output moves in steps of 1/256).
    Returns (the PNGs written, the model card's `ood` entry: {file name: ood.ood_card})."""
    written, cards = [], {}
    for key, data in models.items():
        model = TFLiteModel(data)
        test_probabilities = batched(model.predict, test.images)
        written.append(reliability_diagram(
            test_probabilities, test.labels, os.path.join(out_dir, f"reliability_diagram_{key}.png"),
            title=f"{TFLITE_FILES[key]}, test split"))
        scores = ood_score("msp", probabilities=batched(model.predict, val.images))
        cards[TFLITE_FILES[key]] = ood_card("msp", calibrate_threshold(scores), DEFAULT_QUANTILE, scores)
    return written, cards
