"""Teachers: a registry of backbones that all expose the student's tap names and logits.

These live here:
- `keras.applications` backbones (ResNet50, DenseNet121, MobileNetV2, EfficientNetB0): the
  teachers a real study uses. `weights=None` builds them offline; `weights="imagenet"` downloads
  ImageNet weights when a user asks for them.
- `mobile_x2`, `mobile_x3`: the student's own depthwise-separable design, two and three times as
  wide (0.2M and 0.45M parameters). On the synthetic data they learn as fast per epoch as the
  student, where plain residual CNNs of the same size lag far behind; they are the embedded
  default's teachers and train on 2 CPU cores in minutes (docs/results.md has the figures).
- `mobile_hr`: the student itself (same 52k parameters) with a stride-1 stem, so it sees the frame
  at full resolution (taps at strides 2, 4, 8; four times the activations, 2.5x the student's
  training time): a teacher of another kind than the default two, for fusion. It helps most on
  pairs of classes that differ in fine texture (`experiments.pair_probe` measures them).
- small residual/plain CNNs (`small_resnet`, `small_plaincnn`, `small_deepresnet`, and
  `tiny_resnet` for tests): heterogeneous architectures for fusion experiments.

Every teacher takes raw RGB pixels in [0, 255] (like the student) and applies its own
normalization, exposes `feat_1`, `feat_2`, `feat_3` (increasing stride) and outputs `logits`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import keras

from keras_endokd.models.fused_batchnorm import FusedBatchNormalization
from keras_endokd.models.preprocess import ImageNetPreprocess
from keras_endokd.models.student import separable_cnn
from keras_endokd.models.taps import BN_MOMENTUM, FEATURE_TAPS, LOGITS, tap_model


@dataclasses.dataclass(frozen=True)
class _Application:
    constructor: Callable
    preprocess: str  # ImageNetPreprocess mode the backbone's ImageNet weights expect
    taps: tuple  # backbone layers at strides 8, 16, 32, exposed as feat_1..feat_3


_APPLICATIONS = {
    "resnet50": _Application(
        keras.applications.ResNet50, "caffe",
        ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
    ),
    "densenet121": _Application(
        keras.applications.DenseNet121, "torch",
        ("conv3_block12_concat", "conv4_block24_concat", "relu"),
    ),
    "mobilenetv2": _Application(
        keras.applications.MobileNetV2, "tf", ("block_5_add", "block_12_add", "out_relu")
    ),
    "efficientnetb0": _Application(
        # EfficientNet normalizes inside the backbone and expects [0, 255].
        keras.applications.EfficientNetB0, "none",
        ("block3b_add", "block5c_add", "top_activation"),
    ),
}


@dataclasses.dataclass(frozen=True)
class _SmallCNN:
    width: int  # stem filters; stages use 2x, 4x, 8x
    residual: bool
    blocks_per_stage: int


_SMALL = {
    "small_resnet": _SmallCNN(width=16, residual=True, blocks_per_stage=1),
    "small_plaincnn": _SmallCNN(width=16, residual=False, blocks_per_stage=1),
    "small_deepresnet": _SmallCNN(width=12, residual=True, blocks_per_stage=2),
    "tiny_resnet": _SmallCNN(width=4, residual=True, blocks_per_stage=1),
}

# The student's own architecture: (width multiplier, stem stride).
_MOBILE = {"mobile_x2": (2.0, 2), "mobile_x3": (3.0, 2), "mobile_hr": (1.0, 1)}

TEACHER_NAMES = tuple(sorted((*_APPLICATIONS, *_SMALL, *_MOBILE)))
DEFAULT_TEACHERS = ("mobile_x3", "mobile_x2", "small_resnet")


def build_teacher(
    name: str, num_classes: int = 8, image_size: int = 128, weights: Optional[str] = None
) -> keras.Model:
    """A teacher by registry name, or loaded from a saved `.keras` teacher.

    Args:
      name: a registry name (`TEACHER_NAMES`) or the path of a `.keras` file saved by this
        package (loaded with `safe_mode=True`).
      weights: None (random init, offline), "imagenet" (keras.applications backbones only;
        downloads), or the path of a `.keras` teacher whose weights to load.
    """
    if name.endswith(".keras") or os.path.sep in name:
        return load_teacher(name, num_classes=num_classes, image_size=image_size)
    if name in _MOBILE:
        if weights not in (None,):
            raise ValueError(f"Teacher '{name}' is built from scratch; weights must be None.")
        width, stem_stride = _MOBILE[name]
        return separable_cnn(num_classes, image_size, width=width, dropout=0.3, name=f"teacher_{name}",
                             stem_stride=stem_stride)
    if name not in _APPLICATIONS and name not in _SMALL:
        raise ValueError(
            f"Unknown teacher '{name}'. Expected one of {', '.join(TEACHER_NAMES)}, "
            "or the path of a saved .keras teacher."
        )
    if weights not in (None, "imagenet") and not str(weights).endswith(".keras"):
        raise ValueError(f"weights must be None, 'imagenet' or a .keras path, got {weights!r}.")
    if weights == "imagenet" and name not in _APPLICATIONS:
        raise ValueError(f"Teacher '{name}' has no ImageNet weights; only {sorted(_APPLICATIONS)} do.")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    if name in _APPLICATIONS:
        last = _application_features(name, inputs, image_size, weights)
    else:
        last = _small_cnn_features(_SMALL[name], inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(last)
    x = keras.layers.Dropout(0.3, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name=LOGITS)(x)
    model = keras.Model(inputs, logits, name=f"teacher_{name}")
    if weights is not None and str(weights).endswith(".keras"):
        model.set_weights(load_teacher(weights, num_classes, image_size).get_weights())
    return model


def load_teacher(path: str, num_classes: int, image_size: int) -> keras.Model:
    """Load a saved teacher safely and check it fits the data it will teach on."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Teacher file '{path}' does not exist (expected a .keras file).")
    model = keras.saving.load_model(path, safe_mode=True, compile=False)
    try:
        tap_model(model, (*FEATURE_TAPS, LOGITS))
    except ValueError as err:
        raise ValueError(f"Teacher '{path}' is not a keras-endokd teacher: {err}") from None
    got_classes = model.output.shape[-1]
    got_size = tuple(model.input.shape[1:3])
    if got_classes != num_classes or got_size != (image_size, image_size):
        raise ValueError(
            f"Teacher '{path}' takes {got_size} images and predicts {got_classes} classes; "
            f"this run needs ({image_size}, {image_size}) and {num_classes}."
        )
    return model


def _application_features(name, inputs, image_size, weights):
    """The backbone built into the teacher's own graph, its tap layers renamed feat_1..feat_3.

    Built flat (`input_tensor=`) rather than nested, so its intermediate layers are layers of the
    teacher and `tap_model` reads them by name; the renamed layers are weightless (Add, Concatenate,
    activations), so ImageNet weights still load.
    """
    app = _APPLICATIONS[name]
    x = ImageNetPreprocess(app.preprocess, name="preprocess")(inputs)
    backbone = app.constructor(
        include_top=False,
        weights="imagenet" if weights == "imagenet" else None,
        input_tensor=x,
        input_shape=(image_size, image_size, 3),
    )
    for tap, layer_name in zip(FEATURE_TAPS, app.taps):
        backbone.get_layer(layer_name).name = tap
    return backbone.get_layer(FEATURE_TAPS[-1]).output


def _small_cnn_features(cfg: _SmallCNN, inputs):
    """Stem (stride 2) then three stages at strides 4, 8, 16, like the student's taps."""
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inputs)
    x = _conv_bn(x, cfg.width, 3, 2, "stem")
    for stage, mult in enumerate((2, 4, 8), start=1):
        filters = cfg.width * mult
        x = _conv_bn(x, filters, 3, 2, f"stage{stage}_down")
        for block in range(cfg.blocks_per_stage):
            name = f"stage{stage}_block{block}"
            y = _conv_bn(x, filters, 3, 1, f"{name}_a")
            y = _conv_bn(y, filters, 3, 1, f"{name}_b", relu=False)
            if cfg.residual:
                y = keras.layers.Add(name=f"{name}_add")([x, y])
            x = keras.layers.ReLU(name=f"{name}_out")(y)
        x = keras.layers.Identity(name=FEATURE_TAPS[stage - 1])(x)
    return x


def _conv_bn(x, filters, kernel, stride, name, relu=True):
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x
