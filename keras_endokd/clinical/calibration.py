"""Can the probability be trusted? Calibration error, Brier score, temperature scaling.

Guo, Pleiss, Sun and Weinberger, "On Calibration of Modern Neural Networks", ICML 2017
(https://arxiv.org/abs/1706.04599). A classifier is calibrated when, of the frames it gives
confidence p, a share p is right. Small CNNs trained with cross-entropy are usually
over-confident; one scalar fixes most of it.

- Expected calibration error (ECE): the frames are put in M equal-width bins by their top-1
  confidence conf_i = max_k p_ik, bin m holding (m-1)/M < conf <= m/M; then
  ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)|, with acc the share of correct top-1 and conf
  the mean confidence of the bin. M = 15 as in the paper.
- Brier score (Brier 1950), multi-class: mean over frames of sum_k (p_ik - y_ik)^2, y one-hot;
  0 is perfect, 2 the worst.
- Negative log-likelihood: mean of -log p_i,label.
- Temperature scaling: softmax(z / T) with one T > 0 fitted on the validation split by
  minimising its NLL. T leaves the arg-max, hence accuracy, unchanged. Dividing the logits by T
  is the same as dividing the last Dense layer's kernel and bias by T (`fold_temperature`), so the
  exported TFLite models give calibrated probabilities with no new operator.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

ECE_BINS = 15
# T is searched on log T in [1/20, 20]: far beyond any temperature a trained CNN needs.
TEMPERATURE_BOUNDS = (0.05, 20.0)


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) over the last axis, in float64 (logits [N, K] -> probabilities [N, K])."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _check(probs, labels):
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if probs.ndim != 2 or labels.shape != (len(probs),):
        raise ValueError(f"expected probabilities [N, K] and labels [N]; got shapes "
                         f"{probs.shape} and {labels.shape}.")
    if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got {labels.min()}..{labels.max()}.")
    return probs, labels


def reliability_bins(probs, labels, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin: {"edges" [M+1], "count" [M], "confidence" [M] (mean top-1
    probability, NaN when empty), "accuracy" [M] (share correct, NaN when empty)}."""
    probs, labels = _check(probs, labels)
    confidence = probs.max(axis=1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(axis=1) == labels) if len(probs) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin m (0-based) holds edges[m] < conf <= edges[m+1]; a confidence of exactly 0 goes to bin 0.
    index = np.digitize(confidence, edges[1:-1], right=True)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=bins) / count
    return {"edges": edges, "count": count,
            "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """ECE of probabilities [N, K] against integer labels [N], `bins` equal-width bins (Guo 2017)."""
    b = reliability_bins(probs, labels, bins)
    n = b["count"].sum()
    if n == 0:
        return float("nan")
    filled = b["count"] > 0
    gaps = np.abs(b["accuracy"][filled] - b["confidence"][filled])
    return float(np.sum(b["count"][filled] / n * gaps))


def brier_score(probs, labels) -> float:
    """Multi-class Brier score: mean over frames of sum over classes of (p - one_hot)^2."""
    probs, labels = _check(probs, labels)
    if not len(labels):
        return float("nan")
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def negative_log_likelihood(probs, labels, eps: float = 1e-12) -> float:
    """Mean -log p(label) (natural log); probabilities clipped at `eps` so a 0 stays finite."""
    probs, labels = _check(probs, labels)
    if not len(labels):
        return float("nan")
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))))


def calibration_block(probs, labels, bins: int = ECE_BINS) -> dict:
    """{"ece", "brier", "nll"} of probabilities [N, K] against labels [N]: metrics.json's figures."""
    return {"ece": expected_calibration_error(probs, labels, bins),
            "brier": brier_score(probs, labels),
            "nll": negative_log_likelihood(probs, labels)}


def _nll_of_logits(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


# Fewer validation frames than this fit a temperature to their noise (8 frames gave T = 0.05 and
# a worse test ECE): below it T stays 1. Guo et al. fit on thousands.
MIN_FIT_IMAGES = 100


def fit_temperature(val_logits, val_labels, bounds=TEMPERATURE_BOUNDS,
                    min_images: int = MIN_FIT_IMAGES) -> float:
    """The T > 0 minimising the NLL of softmax(val_logits / T) (Guo et al. 2017, section 4.2).

    val_logits: float [N, K], the model's raw logits on the validation split (not probabilities).
    The NLL is convex in 1/T, so a bounded scalar search on log T (scipy's Brent, `bounds` on T)
    finds the one minimum. Returns 1.0 when there is too little to fit (fewer than `min_images`
    validation frames).
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(val_logits, dtype=np.float64)
    labels = np.asarray(val_labels, dtype=np.int64)
    _check(logits, labels)
    if len(labels) < max(1, min_images):
        return 1.0
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    result = minimize_scalar(lambda log_t: _nll_of_logits(logits, labels, np.exp(log_t)),
                             bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    t = float(np.exp(result.x))
    # Brent's bounded search never evaluates the end points: keep T = 1 if it was no worse.
    return t if _nll_of_logits(logits, labels, t) <= _nll_of_logits(logits, labels, 1.0) else 1.0


def fold_temperature(model, temperature: float, layer_name: str = "logits"):
    """A copy of `model` whose logits are divided by `temperature`: the Dense layer `layer_name`
    gets kernel / T and bias / T, since (W x + b) / T = (W / T) x + b / T. No layer is added, so
    the converted TFLite models keep their operators (the int8 one stays TFLite Micro-only).

    Works for Keras 3 and tf_keras models (the copy is made with the model's own Keras). The
    original model is left unchanged. Raises ValueError when the layer is missing or is not a
    Dense layer with a bias.
    """
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}.")
    names = [layer.name for layer in model.layers]
    if layer_name not in names:
        raise ValueError(f"model '{model.name}' has no layer '{layer_name}' to fold the temperature "
                         f"into; its last layers are {names[-3:]}.")
    clone_model = _keras_of(model).models.clone_model
    copy = clone_model(model)
    copy.set_weights(model.get_weights())
    layer = copy.get_layer(layer_name)
    weights = layer.get_weights()
    if len(weights) != 2 or not hasattr(layer, "units"):
        raise ValueError(f"layer '{layer_name}' of model '{model.name}' must be a Dense layer with a "
                         f"bias to fold a temperature into; it is a {type(layer).__name__} with "
                         f"{len(weights)} weight tensors.")
    layer.set_weights([w / t for w in weights])
    return copy


def _keras_of(model):
    """The Keras that built `model`: Keras 3 (`keras`) or tf_keras (tfmot's pruned/QAT models)."""
    if type(model).__module__.startswith("tf_keras"):
        import tf_keras

        return tf_keras
    import keras

    return keras


def reliability_diagram(probs, labels, path: str, title: str = "", bins: int = ECE_BINS,
                        temperature: Optional[float] = None) -> str:
    """Accuracy against confidence per bin as a PNG (written atomically), with ECE in the title.

    Bars: accuracy of each bin; the diagonal: perfect calibration; the red gap: confidence minus
    accuracy (over-confidence above the bar). The lower panel is the histogram of confidences, so
    a reader sees which bins hold the frames. `temperature` is only printed in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from keras_endokd.atomic_files import atomic_path

    b = reliability_bins(probs, labels, bins)
    ece = expected_calibration_error(probs, labels, bins)
    centres = (b["edges"][:-1] + b["edges"][1:]) / 2
    width = 1.0 / bins
    filled = b["count"] > 0
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.6, 5.4), dpi=110, sharex=True,
                                   gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centres[filled], b["accuracy"][filled], width=width, color="#4c78a8",
           edgecolor="white", label="accuracy")
    gap = b["confidence"][filled] - b["accuracy"][filled]
    ax.bar(centres[filled], gap, bottom=b["accuracy"][filled], width=width, color="#e45756",
           alpha=0.45, edgecolor="#e45756", label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=7)
    heading = f"ECE {ece:.3f} ({bins} bins, {int(b['count'].sum())} images)"
    if temperature is not None:
        heading += f", T = {temperature:.2f}"
    ax.set_title(f"{title}\n{heading}" if title else heading, fontsize=9)
    hist.bar(centres, b["count"], width=width, color="#9d9d9d", edgecolor="white")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("images")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return path
