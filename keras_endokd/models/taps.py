"""Names shared by every model: where a distiller reads features and logits.

Student and teachers name the same layers `feat_1`, `feat_2`, `feat_3` (increasing stride) and
`logits`, so a distillation loss can say "student feat_2 against teacher feat_2" without knowing
the backbone. Strides and widths differ between backbones; the losses match them themselves.
"""

import keras

FEATURE_TAPS = ("feat_1", "feat_2", "feat_3")
# BatchNormalization's moving-average momentum for our models. Keras' 0.99 lags far behind the
# batch statistics over the few hundred steps of a small-data run (a teacher scored 43% in
# inference mode vs 74% with batch statistics); 0.9 is PyTorch's default (its momentum=0.1).
BN_MOMENTUM = 0.9
LOGITS = "logits"


def available_taps(model: keras.Model) -> list:
    names = {layer.name for layer in model.layers}
    return [t for t in (*FEATURE_TAPS, LOGITS) if t in names]


def tap_model(model: keras.Model, taps) -> keras.Model:
    """A model sharing `model`'s weights that returns {tap: tensor} in one forward pass.

    Raises a ValueError listing the available taps when one is missing.
    """
    missing = [t for t in taps if t not in available_taps(model)]
    if missing:
        raise ValueError(
            f"Model '{model.name}' has no tap(s) {missing}; it exposes {available_taps(model)}."
        )
    outputs = {t: model.get_layer(t).output for t in taps}
    return keras.Model(model.input, outputs, name=f"{model.name}_taps")
