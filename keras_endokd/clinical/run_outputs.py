"""What a run's evaluation adds for a clinical reader, in one call: files and metrics entries.

`clinical_outputs(student, val, test, class_names, run_dir)` takes the Keras student (logits
out) and the validation and test images, and

- fits the temperature on the validation logits (`calibration.fit_temperature`) and scores the
  test split before (T = 1, the student as saved) and after (logits / T);
- scores the student's test probabilities (T = 1): ECE, Brier, NLL, ROC-AUC and PR-AUC per class
  and their macro means (`probability_metrics`), the block metrics.json's `student` entry carries;
- calibrates the out-of-distribution threshold on the validation split, on the calibrated
  probabilities (those the exported models, with T folded in, give), and counts the test frames
  it flags;
- writes reliability_diagram.png (T = 1), reliability_diagram_calibrated.png (T fitted),
  roc_pr_curves.png and explanations.png (Grad-CAM of misclassified and correct test images)
  into `run_dir`.
"""

from __future__ import annotations

import os
from typing import Sequence, Tuple

import numpy as np

from keras_endokd.clinical import calibration, curves, gradcam, ood
from keras_endokd.clinical.html_report import CURVES_PNG, EXPLANATIONS_PNG, RELIABILITY_PNG
from keras_endokd.clinical.probability_metrics import probability_metrics

CALIBRATED_RELIABILITY_PNG = "reliability_diagram_calibrated.png"


def predict_logits(model, images, batch_size: int = 64) -> np.ndarray:
    """The model's outputs [N, K] on uint8 images [N, H, W, 3], fed as float32 in chunks."""
    images = np.asarray(images)
    out = [np.asarray(model(images[i:i + batch_size].astype(np.float32), training=False))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, int(model.output_shape[-1])), np.float32)


def clinical_outputs(student, val: Tuple[np.ndarray, np.ndarray], test: Tuple[np.ndarray, np.ndarray],
                     class_names: Sequence[str], run_dir: str, ood_method: str = "msp",
                     ood_quantile: float = ood.DEFAULT_QUANTILE, explain: bool = True,
                     batch_size: int = 64, plots: bool = True) -> dict:
    """Writes the PNGs into `run_dir` and returns the metrics.json entries:

        {"student": probability_metrics of the test split at T = 1 (merge into "student" with
                    per_class merged class by class),
         "calibration": {"temperature", "fitted_on", "val_nll_before", "val_nll_after",
                         "before": {ece, brier, nll}, "after": {ece, brier, nll}} (test split),
         "ood": ood.ood_card(...) plus "test_flagged" (share of test frames flagged),
         "files": the PNG names written}

    val, test: (uint8 images [N, H, W, 3], int labels [N]). plots=False computes every figure
    and writes no PNG.
    """
    val_images, val_labels = val
    test_images, test_labels = test
    val_logits = predict_logits(student, val_images, batch_size)
    test_logits = predict_logits(student, test_images, batch_size)
    t = calibration.fit_temperature(val_logits, val_labels)
    raw, calibrated = calibration.softmax(test_logits), calibration.softmax(test_logits, t)
    cal = {
        "temperature": t, "fitted_on": "val" if len(val_labels) >= calibration.MIN_FIT_IMAGES
        else f"not fitted: {len(val_labels)} validation images (under {calibration.MIN_FIT_IMAGES})",
        "val_nll_before": calibration.negative_log_likelihood(calibration.softmax(val_logits), val_labels),
        "val_nll_after": calibration.negative_log_likelihood(calibration.softmax(val_logits, t), val_labels),
        "before": calibration.calibration_block(raw, test_labels),
        "after": calibration.calibration_block(calibrated, test_labels),
    }
    files = [] if not plots else [
        calibration.reliability_diagram(raw, test_labels, os.path.join(run_dir, RELIABILITY_PNG),
                                        title="Keras student, test split, as saved"),
        calibration.reliability_diagram(calibrated, test_labels,
                                        os.path.join(run_dir, CALIBRATED_RELIABILITY_PNG),
                                        title="Keras student, test split, temperature-scaled",
                                        temperature=t),
        curves.plot_roc_pr_curves(raw, test_labels, class_names, os.path.join(run_dir, CURVES_PNG),
                                  title="Keras student, test split"),
    ]
    val_scores = ood.ood_score(ood_method, logits=val_logits / t)
    threshold = ood.calibrate_threshold(val_scores, ood_quantile)
    card = ood.ood_card(ood_method, threshold, ood_quantile, val_scores)
    card["temperature"] = t
    test_scores = ood.ood_score(ood_method, logits=test_logits / t)
    card["test_flagged"] = float(np.mean(ood.flag(test_scores, threshold))) if len(test_scores) else None
    if plots and explain and len(test_images):
        gradcam.explain_examples(student, test_images, test_labels, class_names,
                                 os.path.join(run_dir, EXPLANATIONS_PNG), batch_size=batch_size,
                                 title="Keras student, test split", logits=test_logits)
        files.append(os.path.join(run_dir, EXPLANATIONS_PNG))
    return {"student": probability_metrics(raw, test_labels, class_names), "calibration": cal,
            "ood": card, "files": [os.path.basename(f) for f in files]}
