"""Where a distiller reads a model: its layers by name, and its final output as logits.

Our student and teachers name their feature layers `feat_1`, `feat_2`, `feat_3` (increasing
stride) and their last layer `logits`, so a loss can say "student feat_2 against teacher feat_2"
without knowing the backbone: those are the losses' default layer names. Any other functional or
Sequential model plugs in by naming its own layers (`keras.applications.ResNet50`'s
`conv4_block6_out`, a user's `block3_relu`), as `keras.distillation` does with
`teacher_layer_name` / `student_layer_name`.

`LOGITS` names a model's final output, whatever its last layer is called. A model that ends in a
softmax (`Dense(activation="softmax")`, `Softmax`, `Activation("softmax")`) outputs
probabilities p; the distiller reads log(clip(p, eps, 1)) as its logits. That is exact for every
temperature-scaled term: log p = z - logsumexp(z), and a constant added to every logit cancels
in softmax(z / T), so softmax(log(p) / T) = softmax(z / T) up to the clipping at eps = 1e-7.
A term that compares final outputs directly (RKD or a mean squared error on them) sees log p,
which differs from z by a constant per sample.
"""

from __future__ import annotations

import difflib
from typing import Iterable, List

import keras

FEATURE_TAPS = ("feat_1", "feat_2", "feat_3")
# BatchNormalization's moving-average momentum for our models. Keras' 0.99 lags far behind the
# batch statistics over the few hundred steps of a small-data run (a teacher scored 43% in
# inference mode vs 74% with batch statistics); 0.9 is PyTorch's default (its momentum=0.1).
BN_MOMENTUM = 0.9
LOGITS = "logits"


def has_graph(model) -> bool:
    """True for a functional model or a built Sequential one: its layers' outputs are symbolic."""
    try:
        return bool(model.inputs) and bool(model.outputs)
    except (AttributeError, ValueError):  # subclassed, or a Sequential not built yet
        return False


def layer_names(model: keras.Model) -> List[str]:
    return [layer.name for layer in model.layers]


def _output_layer(model: keras.Model):
    if isinstance(model, keras.Sequential) or not has_graph(model):
        return model.layers[-1] if getattr(model, "layers", None) else None
    for layer in reversed(model.layers):
        try:
            if layer.output is model.outputs[0]:
                return layer
        except (AttributeError, ValueError):  # a layer called several times has no single output
            continue
    return None


def ends_in_softmax(model: keras.Model) -> bool:
    """Whether `model`'s final output is a softmax (probabilities, not logits).

    Detected from its last layer: a `Softmax` layer, or any layer whose `activation` is softmax
    (Dense, Activation, Conv). A subclassed model's `call` cannot be read: it counts as logits.
    """
    layer = _output_layer(model)
    if layer is None:
        return False
    if isinstance(layer, keras.layers.Softmax):
        return True
    if isinstance(layer, keras.Model):
        return ends_in_softmax(layer)
    return getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"


def as_logits(outputs, softmax: bool):
    """The model's final output as logits: itself, or log(clip(p, eps, 1)) after a softmax."""
    if not softmax:
        return outputs
    return keras.ops.log(keras.ops.clip(outputs, keras.backend.epsilon(), 1.0))


def missing_layer_error(model: keras.Model, name: str, role: str, reader: str) -> ValueError:
    """A ValueError naming the model, the missing layer, who reads it and the closest names."""
    names = layer_names(model)
    closest = difflib.get_close_matches(name, names, n=5, cutoff=0.0)
    return ValueError(
        f"The {role} '{model.name}' has no layer '{name}' ({reader} reads it). Its closest layer "
        f"names are {', '.join(repr(n) for n in closest) or '(none: it has no layers)'}. Name the "
        f"layer to read in the loss ({role}_layer_name or {role}_layer_names), or with the train "
        f"command's --{role}_taps."
    )


def check_layers(model, names: Iterable[str], role: str, reader: str) -> None:
    """Raises a clear ValueError unless `model` can return every layer in `names` (`LOGITS`: its
    final output, always there) from one forward pass."""
    names = [n for n in names if n != LOGITS]
    if not names:
        return
    if not has_graph(model):
        raise ValueError(
            f"{reader} reads the layer(s) {names} of the {role} '{getattr(model, 'name', model)}', "
            f"which has no symbolic graph (a subclassed model, or a Sequential one not built yet): "
            f"layers can be read by name only from a functional model or a built Sequential one "
            f"(call it once, or `model.build(input_shape)`). Only its final output can be "
            f"distilled as it is."
        )
    available = set(layer_names(model))
    for name in names:
        if name not in available:
            raise missing_layer_error(model, name, role, reader)


def tap_model(model: keras.Model, taps) -> keras.Model:
    """A model sharing `model`'s weights that returns {tap: tensor} in one forward pass.

    `taps` are layer names; `LOGITS` is the final output (as the model gives it: probabilities
    for a softmax model; `as_logits` converts). Raises a ValueError naming the closest layer
    names when one is missing.
    """
    check_layers(model, taps, "model", "tap_model")
    outputs = {t: (model.outputs[0] if t == LOGITS else model.get_layer(t).output) for t in taps}
    return keras.Model(model.inputs[0], outputs, name=f"{model.name}_taps")
