"""A tf_keras twin of the Keras 3 student, for tensorflow-model-optimization, and the way back.

tfmot (pruning, quantization-aware training) accepts only tf_keras models and has no plan for
Keras 3 (tensorflow/model-optimization#1119; see shared TRAPS.md). The student is a plain chain
of standard layers, so it is rebuilt layer by layer in tf_keras from each layer's config, and its
weights are copied by layer name; `to_tf_keras` then CHECKS that both models give the same
outputs (measured: ~2e-6 apart). `copy_weights` works in both directions, so a pruned or
fine-tuned twin goes back into a Keras 3 student the same way.

Only the layer types the student (and its Softmax-topped deployment model) uses are mapped; any
other type raises, naming the layer, rather than being approximated. `Identity` (the feature
taps) becomes `Activation("linear")` with the same name: tfmot's quantization registry knows
`Activation`, not `Identity`.

Never use `tf.keras` here: importing tfmot points it at tf_keras for the whole process.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tf_keras

_CONV_KEYS = ("kernel_size", "strides", "padding", "data_format", "dilation_rate", "activation",
              "use_bias")


def _pick(config, keys):
    return {k: config[k] for k in keys if k in config}


def _activation(config, layer_name):
    act = config.get("activation", "linear")
    if not isinstance(act, str):
        raise ValueError(f"layer '{layer_name}': only named activations are twinned, got {act!r}")
    return act


# Keras 3 class name -> (tf_keras class, its constructor arguments from the Keras 3 config).
_TWINS = {
    "Rescaling": (lambda: tf_keras.layers.Rescaling,
                  lambda c: dict(scale=c["scale"], offset=c.get("offset", 0.0))),
    "Conv2D": (lambda: tf_keras.layers.Conv2D,
               lambda c: dict(filters=c["filters"], groups=c.get("groups", 1),
                              **_pick(c, _CONV_KEYS))),
    "DepthwiseConv2D": (lambda: tf_keras.layers.DepthwiseConv2D,
                        lambda c: dict(depth_multiplier=c.get("depth_multiplier", 1),
                                       **_pick(c, _CONV_KEYS))),
    "BatchNormalization": (lambda: tf_keras.layers.BatchNormalization,
                           lambda c: _pick(c, ("axis", "momentum", "epsilon", "center", "scale"))),
    "ReLU": (lambda: tf_keras.layers.ReLU,
             lambda c: _pick(c, ("max_value", "negative_slope", "threshold"))),
    "Identity": (lambda: tf_keras.layers.Activation, lambda c: dict(activation="linear")),
    "Activation": (lambda: tf_keras.layers.Activation, lambda c: dict(activation=c["activation"])),
    "GlobalAveragePooling2D": (lambda: tf_keras.layers.GlobalAveragePooling2D,
                               lambda c: _pick(c, ("data_format", "keepdims"))),
    "Dropout": (lambda: tf_keras.layers.Dropout,
                lambda c: dict(rate=c["rate"], **_pick(c, ("noise_shape", "seed")))),
    "Dense": (lambda: tf_keras.layers.Dense,
              lambda c: dict(units=c["units"], activation=c.get("activation", "linear"),
                             use_bias=c.get("use_bias", True))),
    "Softmax": (lambda: tf_keras.layers.Softmax, lambda c: dict(axis=c.get("axis", -1))),
}
# The student's BatchNormalization, trained through the fused kernel: tf_keras' own is fused too.
_TWINS["FusedBatchNormalization"] = _TWINS["BatchNormalization"]


def _twin_layer(layer, classes):
    kind = type(layer).__name__
    if kind not in _TWINS:
        raise ValueError(f"layer '{layer.name}' is a {kind}; the tf_keras twin maps only "
                         f"{', '.join(sorted(_TWINS))}")
    config = layer.get_config()
    if "activation" in config:
        config["activation"] = _activation(config, layer.name)
    default_class, arguments = _TWINS[kind]
    cls = classes.get(kind) or default_class()
    return cls(name=layer.name, **arguments(config))


def to_tf_keras(model: keras.Model, check: bool = True, atol: float = 1e-4,
                classes: Optional[dict] = None) -> "tf_keras.Model":
    """The tf_keras twin of a single-input, chain-shaped Keras 3 model, with its weights.

    `classes` maps a Keras 3 class name to a tf_keras subclass built instead of the default one
    with the same arguments (pruning uses it to make DepthwiseConv2D prunable). Raises
    ValueError for a layer type outside the mapped ones or a non-chain graph, and
    (with `check`) when the twin's outputs differ from the model's by `atol` or more.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"model '{model.name}' must have one input and one output")
    inputs = tf_keras.Input(tuple(model.inputs[0].shape[1:]), name=model.layers[0].name)
    tensors = {id(model.inputs[0]): inputs}
    for layer in model.layers[1:]:
        source = layer.input
        if isinstance(source, (list, tuple)) or id(source) not in tensors:
            raise ValueError(f"layer '{layer.name}' does not continue a single chain; the twin "
                             f"supports sequential graphs only")
        tensors[id(layer.output)] = _twin_layer(layer, classes or {})(tensors[id(source)])
    twin = tf_keras.Model(inputs, tensors[id(model.outputs[0])], name=f"{model.name}_tf_keras")
    copy_weights(model, twin)
    if check:
        _check_equal(model, twin, atol, f"the tf_keras twin of '{model.name}' differs from it")
    return twin


def _weighted_layers(model):
    return {layer.name: layer for layer in model.layers if layer.weights}


def copy_weights(source, target) -> list:
    """Copies every weighted layer's weights from `source` to `target` by layer name.

    Works between Keras 3 and tf_keras models in either direction (both order a layer's weights
    the same way: kernel, bias; gamma, beta, moving mean, moving variance). Raises ValueError
    when a weighted target layer has no same-named source layer or shapes differ. Returns the
    names of the copied layers.
    """
    sources = _weighted_layers(source)
    copied = []
    for name, layer in _weighted_layers(target).items():
        if name not in sources:
            raise ValueError(f"'{target.name}' has weighted layer '{name}' that '{source.name}' "
                             f"lacks; source layers: {sorted(sources)}")
        values = sources[name].get_weights()
        shapes = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(v.shape) for v in values] != shapes:
            raise ValueError(f"layer '{name}': source weights {[v.shape for v in values]} do "
                             f"not fit target weights {shapes}")
        layer.set_weights(values)
        copied.append(name)
    return copied


def max_output_difference(a, b, samples: int = 4, seed: int = 0) -> float:
    """Max abs difference of two image models' inference outputs on random pixels in [0, 255]."""
    shape = tuple(a.inputs[0].shape[1:])
    x = np.random.default_rng(seed).uniform(0.0, 255.0, (samples, *shape)).astype(np.float32)
    ya = np.asarray(a(x, training=False))
    yb = np.asarray(b(x, training=False))
    return float(np.max(np.abs(ya - yb)))


def to_keras(twin, template: keras.Model, check: bool = True, atol: float = 1e-4) -> keras.Model:
    """A new Keras 3 model shaped like `template` holding the tf_keras `twin`'s weights."""
    model = keras.models.clone_model(template)
    model.build(template.inputs[0].shape)
    copy_weights(twin, model)
    if check:
        _check_equal(twin, model, atol, f"copying '{twin.name}' back into Keras 3 changed its outputs")
    return model


def _check_equal(a, b, atol: float, what: str) -> None:
    diff = max_output_difference(a, b)
    if not diff < atol:
        raise ValueError(f"{what} by {diff:.3g} (max abs over random inputs), expected < {atol:g}")
