"""The probability half of a model's test metrics: calibration and ROC/PR areas, as one block.

`classification_metrics` scores the top-1 predictions; this scores the probabilities behind
them, with the keys that metrics.json and export_report.json carry for every model:

    ece, brier, nll                    calibration (keras_endokd.clinical.calibration)
    macro_roc_auc, macro_pr_auc        curves (keras_endokd.clinical.curves)
    per_class[<class>].roc_auc, .pr_auc

`add_probability_metrics` (or `merge_probability_metrics`, for a block already computed) merges
the block into an existing `classification_metrics` dict, so `per_class[<class>]` holds
precision, recall, F1, support and both areas side by side.
"""

from __future__ import annotations

from typing import Sequence

from keras_endokd.clinical.calibration import ECE_BINS, calibration_block
from keras_endokd.clinical.curves import curves_block


def probability_metrics(probs, labels, class_names: Sequence[str], bins: int = ECE_BINS) -> dict:
    """{"ece", "brier", "nll", "macro_roc_auc", "macro_pr_auc", "per_class": {class: {"roc_auc",
    "pr_auc"}}[, "auc_excluded"]} of probabilities [N, K] against integer labels [N]."""
    return {**calibration_block(probs, labels, bins), **curves_block(probs, labels, class_names)}


def add_probability_metrics(scores: dict, probs, labels, class_names: Sequence[str],
                            bins: int = ECE_BINS) -> dict:
    """`scores` (a classification_metrics dict) with `probability_metrics(...)` merged in (see
    `merge_probability_metrics`). Returns `scores`, changed in place."""
    return merge_probability_metrics(scores, probability_metrics(probs, labels, class_names, bins))


def merge_probability_metrics(scores: dict, block: dict) -> dict:
    """`scores` with a `probability_metrics` block merged in: top-level keys added, per-class
    entries merged class by class (so precision, recall, F1, support, ROC-AUC and PR-AUC sit
    together). `block` is not changed. Returns `scores`, changed in place."""
    block = dict(block)
    per_class = block.pop("per_class", {})
    scores.update(block)
    merged = scores.setdefault("per_class", {})
    for name, areas in per_class.items():
        merged.setdefault(name, {}).update(areas)
    return scores
