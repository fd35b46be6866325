"""What a clinical user asks of a classifier, beyond its accuracy.

- Can I trust the probability? `calibration`: expected calibration error, Brier score,
  reliability diagram, temperature scaling folded into the last layer (Guo et al. 2017).
- How well does it rank each class? `curves`: one-vs-rest ROC-AUC and PR-AUC per class.
- Where did it look? `gradcam`: Grad-CAM heat maps and overlays (Selvaraju et al. 2017).
- Is this frame like the training ones? `ood`: maximum softmax probability and energy scores
  with a threshold calibrated on the validation split (Hendrycks and Gimpel 2017; Liu et al. 2020).
- All of it on one page: `html_report.write_report(run_dir)` writes a self-contained
  report.html (`python -m keras_endokd.report --run_dir=DIR`).

`probability_metrics` gathers the calibration and curve figures into the block metrics.json and
export_report.json carry for each model.
"""

from keras_endokd.clinical.calibration import (brier_score, calibration_block,
                                               expected_calibration_error, fit_temperature,
                                               fold_temperature, reliability_diagram, softmax)
from keras_endokd.clinical.curves import curves_block, plot_roc_pr_curves
from keras_endokd.clinical.ood import (calibrate_threshold, energy_score, flag,
                                       max_softmax_probability, ood_card, ood_score)
from keras_endokd.clinical.probability_metrics import (add_probability_metrics,
                                                       merge_probability_metrics,
                                                       probability_metrics)

__all__ = [
    "add_probability_metrics", "brier_score", "calibrate_threshold", "calibration_block",
    "curves_block", "energy_score", "expected_calibration_error", "fit_temperature", "flag",
    "fold_temperature", "max_softmax_probability", "merge_probability_metrics", "ood_card",
    "ood_score", "plot_roc_pr_curves", "probability_metrics", "reliability_diagram", "softmax",
]
