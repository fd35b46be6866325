"""Per-class one-vs-rest ROC and precision-recall curves, their areas, and a PNG of them.

For class k the frames of class k are the positives and every other frame a negative; the score
is p_k, the model's probability of k. ROC-AUC is the probability that a random positive scores
above a random negative (ties count half; Hanley and McNeil 1982); PR-AUC is the average
precision, AP = sum_n (R_n - R_{n-1}) P_n over the distinct thresholds (scikit-learn's
`average_precision_score`, no interpolation). The macro ROC-AUC is the unweighted mean over the
classes that have one.

A class with no positive (or no negative) frame in the labels has no curve: its areas are None
in the JSON block, with a note, and it is left out of the macro mean rather than counted as 0
or 1. Hyper-Kvasir's rarest classes can be absent from a fold's test split.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn import metrics as skm

NO_POSITIVE = "no test image of this class: ROC and PR curves undefined"
NO_NEGATIVE = "every test image is of this class: ROC and PR curves undefined"


def _check(probs, labels, class_names):
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or labels.shape != (len(probs),):
        raise ValueError(f"expected scores [N, K] and labels [N]; got shapes {probs.shape} and "
                         f"{labels.shape}.")
    if probs.shape[1] != len(class_names):
        raise ValueError(f"{probs.shape[1]} score columns but {len(class_names)} class names.")
    return probs, labels


def _undefined(labels, k):
    positives = int(np.sum(labels == k))
    if positives == 0:
        return NO_POSITIVE
    if positives == len(labels):
        return NO_NEGATIVE
    return None


def per_class_auc(probs, labels, class_names: Sequence[str]) -> dict:
    """{class: {"roc_auc": float or None, "pr_auc": float or None[, "auc_note": why None]}}."""
    probs, labels = _check(probs, labels, class_names)
    out = {}
    for k, name in enumerate(class_names):
        note = _undefined(labels, k)
        if note:
            out[name] = {"roc_auc": None, "pr_auc": None, "auc_note": note}
            continue
        positive = labels == k
        out[name] = {"roc_auc": float(skm.roc_auc_score(positive, probs[:, k])),
                     "pr_auc": float(skm.average_precision_score(positive, probs[:, k]))}
    return out


def macro_roc_auc(per_class: dict) -> float:
    """Unweighted mean ROC-AUC over the classes that have one (NaN when none has)."""
    values = [v["roc_auc"] for v in per_class.values() if v["roc_auc"] is not None]
    return float(np.mean(values)) if values else float("nan")


def curves_block(probs, labels, class_names: Sequence[str]) -> dict:
    """{"macro_roc_auc", "macro_pr_auc", "per_class": per_class_auc(...)}; the macro figures are
    None when no class has a curve, and the classes left out are listed under "auc_excluded"."""
    per_class = per_class_auc(probs, labels, class_names)
    excluded = [name for name, v in per_class.items() if v["roc_auc"] is None]
    roc = macro_roc_auc(per_class)
    pr = [v["pr_auc"] for v in per_class.values() if v["pr_auc"] is not None]
    block = {"macro_roc_auc": None if math.isnan(roc) else roc,
             "macro_pr_auc": float(np.mean(pr)) if pr else None,
             "per_class": per_class}
    if excluded:
        block["auc_excluded"] = excluded
    return block


def plot_roc_pr_curves(probs, labels, class_names: Sequence[str], path: str, title: str = "") -> str:
    """Small multiples, one panel per class: its ROC curve (TPR against FPR, solid) and PR curve
    (precision against recall, dashed) with both areas in the panel's title; a PNG written
    atomically. Six panels a row keeps 23 classes legible (4 rows); a class without a curve
    gets an empty panel saying why.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_endokd.atomic_files import atomic_path

    probs, labels = _check(probs, labels, class_names)
    per_class = per_class_auc(probs, labels, class_names)
    n = len(class_names)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.35 * rows + 0.6), dpi=100,
                             squeeze=False, sharex=True, sharey=True)
    for k, name in enumerate(class_names):
        ax = axes[k // cols][k % cols]
        ax.plot([0, 1], [0, 1], ":", color="#bbbbbb", lw=0.8)
        entry = per_class[name]
        short = name if len(name) <= 24 else name[:23] + "…"
        if entry["roc_auc"] is None:
            ax.text(0.5, 0.5, "no curve:\n" + ("no positive" if entry["auc_note"] == NO_POSITIVE
                                               else "no negative"),
                    ha="center", va="center", fontsize=8, color="#999999")
            ax.set_title(short, fontsize=8)
        else:
            positive = labels == k
            fpr, tpr, _ = skm.roc_curve(positive, probs[:, k])
            precision, recall, _ = skm.precision_recall_curve(positive, probs[:, k])
            ax.plot(fpr, tpr, color="#4c78a8", lw=1.4, label="ROC (TPR vs FPR)")
            ax.plot(recall, precision, "--", color="#f58518", lw=1.2,
                    label="PR (precision vs recall)")
            ax.set_title(f"{short}\nROC {entry['roc_auc']:.3f} · AP {entry['pr_auc']:.3f}",
                         fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    handles, names = next(((a.get_legend_handles_labels()) for a in axes.flat
                           if a.get_legend_handles_labels()[0]), ([], []))
    macro = macro_roc_auc(per_class)
    heading = f"one-vs-rest curves, macro ROC-AUC {macro:.3f}"
    fig.suptitle(f"{title}: {heading}" if title else heading, fontsize=10)
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
