"""Is this frame like the ones the student learned from? Out-of-distribution scores and a flag.

Two post-hoc scores, both "higher = more familiar", so one rule serves both: a frame whose
score falls below a threshold is flagged.

- Maximum softmax probability, MSP = max_k softmax(z)_k (Hendrycks and Gimpel, "A Baseline for
  Detecting Misclassified and Out-of-Distribution Examples in Neural Networks", ICLR 2017,
  https://arxiv.org/abs/1610.02136). It needs only the probabilities, so it works for every
  exported model, the int8 one included (whose output is probabilities to 1/256).
- Energy (Liu, Wang, Owens and Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020,
  https://arxiv.org/abs/2010.03496): E(x) = -T logsumexp(z / T). In-distribution frames have
  lower energy; the score here is its negative, T logsumexp(z / T). It needs the logits, which
  the Keras student has and the probability-output TFLite models do not (log-probabilities
  differ from the logits by a per-frame constant, which is exactly what the energy measures).

The threshold is the `quantile` (default 5%) of the scores of the validation split: about that
share of in-distribution frames is flagged too, a false-alarm rate chosen up front (the usual
operating point is 95% true-positive rate on in-distribution data). It belongs to the model
that produced the scores: a temperature folded into the model changes MSP and energy, so
calibrate the threshold on the model that ships.
"""

from __future__ import annotations

import numpy as np

METHODS = ("msp", "energy")
DEFAULT_QUANTILE = 0.05


def max_softmax_probability(logits=None, probabilities=None) -> np.ndarray:
    """MSP [N] from logits [N, K] or from probabilities [N, K] (give exactly one)."""
    if (logits is None) == (probabilities is None):
        raise ValueError("give exactly one of logits or probabilities.")
    if probabilities is None:
        from keras_endokd.clinical.calibration import softmax

        probabilities = softmax(logits)
    return np.asarray(probabilities, dtype=np.float64).max(axis=-1)


def energy_score(logits, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy [N] of logits [N, K]: T logsumexp(z / T) (higher = more familiar)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    peak = z.max(axis=-1)
    return float(temperature) * (peak + np.log(np.exp(z - peak[..., None]).sum(axis=-1)))


def ood_score(method: str, logits=None, probabilities=None) -> np.ndarray:
    """The score of `method` ("msp" from logits or probabilities; "energy" from logits only)."""
    if method == "msp":
        return max_softmax_probability(logits, probabilities)
    if method == "energy":
        if logits is None:
            raise ValueError("the energy score needs logits; a model that outputs probabilities "
                             "(the exported .tflite files) supports --ood_method=msp only.")
        return energy_score(logits)
    raise ValueError(f"unknown out-of-distribution method {method!r}; expected one of {METHODS}.")


def calibrate_threshold(val_scores, quantile: float = DEFAULT_QUANTILE) -> float:
    """The score under which a `quantile` share of the validation (in-distribution) frames fall."""
    scores = np.asarray(val_scores, dtype=np.float64)
    if not 0.0 <= quantile < 1.0:
        raise ValueError(f"quantile must be in [0, 1), got {quantile}.")
    if not len(scores):
        raise ValueError("no validation scores to calibrate an out-of-distribution threshold on.")
    return float(np.quantile(scores, quantile, method="lower"))


def flag(score, threshold: float):
    """True where a frame is unfamiliar: its score is below `threshold` (an array or a bool)."""
    flagged = np.asarray(score, dtype=np.float64) < float(threshold)
    return bool(flagged) if flagged.ndim == 0 else flagged


def ood_card(method: str, threshold: float, quantile: float, val_scores) -> dict:
    """The model card's `ood` entry: how a deployer computes and applies the flag."""
    scores = np.asarray(val_scores, dtype=np.float64)
    formula = {"msp": "score = max_k p_k (the top-1 probability)",
               "energy": "score = logsumexp_k z_k (z: logits)"}[method]
    return {
        "method": method,
        "score": formula,
        "threshold": float(threshold),
        "rule": "flag the frame as unfamiliar (out of distribution) when score < threshold",
        "calibration": f"the {quantile:.0%} quantile of the validation split's scores "
                       f"({len(scores)} images): about {quantile:.0%} of in-distribution "
                       "frames are flagged too",
        "validation_flagged": float(np.mean(flag(scores, threshold))) if len(scores) else None,
        "reference": {"msp": "Hendrycks and Gimpel, ICLR 2017",
                      "energy": "Liu et al., NeurIPS 2020"}[method],
    }
