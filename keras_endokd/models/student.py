"""The ~51.8k-parameter student CNN: small enough for a microcontroller, tappable for distillation.

Layer-by-layer trainable parameters at the default 8 classes (BatchNormalization counts its
gamma and beta; its moving statistics are not trainable and fold into the convolutions at
conversion):

    block           operation                         output (128x128 in)   trainable params
    stem            Conv3x3/2 3->16, BN, ReLU6        64x64x16                     464
    block1          DW3x3/2 16, BN, ReLU6             32x32x16                     176
                    PW 16->32, BN, ReLU6              32x32x32        -> feat_1    576
    block2          DW3x3/2 32, BN, ReLU6             16x16x32                     352
                    PW 32->64, BN, ReLU6              16x16x64                   2,176
    block3          DW3x3 64, BN, ReLU6               16x16x64                     704
                    PW 64->64, BN, ReLU6              16x16x64        -> feat_2  4,224
    block4          DW3x3/2 64, BN, ReLU6             8x8x64                       704
                    PW 64->128, BN, ReLU6             8x8x128                    8,448
    block5          DW3x3 128, BN, ReLU6              8x8x128                    1,408
                    PW 128->128, BN, ReLU6            8x8x128                   16,640
    block6          DW3x3 128, BN, ReLU6              8x8x128                    1,408
                    PW 128->104, BN, ReLU6            8x8x104         -> feat_3 13,520
    head            GlobalAveragePooling, Dropout, Dense 104->8 (logits)           840
    total                                                                       51,640

(`student_param_table` lists the same figures per layer; a test pins the total.)

Why this shape: the stride-2 stem and the stride-2 depthwise block right after it shrink the
largest int8 activation to 64x64x16 = 64 KiB, which keeps TensorFlow Lite Micro's arena far below
256 KiB at 128x128 (a naive 50k CNN needs ~2 MiB at 224x224). Only operations that int8 TFLite
and TFLite Micro run are used: Conv2D, DepthwiseConv2D, BatchNormalization (folded by the
converter), ReLU6, average pooling, Dense. The model takes raw RGB pixel values in [0, 255] and
normalizes inside, so the deployed int8/uint8 input is the camera pixel itself.
"""

from __future__ import annotations

import keras

from keras_endokd.models.fused_batchnorm import FusedBatchNormalization
from keras_endokd.models.taps import BN_MOMENTUM, FEATURE_TAPS, LOGITS

# (depthwise stride, pointwise filters, tap name or None), after the stem.
_BLOCKS = (
    (2, 32, "feat_1"),
    (2, 64, None),
    (1, 64, "feat_2"),
    (2, 128, None),
    (1, 128, None),
    (1, 104, "feat_3"),
)
_STEM_FILTERS = 16


def _conv_bn_relu(x, layer, name):
    x = layer(x)
    x = FusedBatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{name}_relu")(x)


def build_student(
    num_classes: int = 8, image_size: int = 128, dropout: float = 0.2, name: str = "student"
) -> keras.Model:
    """The student: raw RGB pixels [0, 255] of shape (image_size, image_size, 3) -> logits.

    Feature taps (`feat_1`, `feat_2`, `feat_3`: strides 4, 8 and 16) are named identity layers,
    so a distiller reads them with `model.get_layer(name).output` in the same forward pass.
    """
    return separable_cnn(num_classes, image_size, width=1.0, dropout=dropout, name=name)


def separable_cnn(
    num_classes: int, image_size: int, width: float = 1.0, dropout: float = 0.2, name: str = "student",
    stem_stride: int = 2,
) -> keras.Model:
    """The student's architecture with every layer `width` times as wide (teachers use 2-3x).

    `stem_stride=1` keeps the frame at full resolution through the stem, so every later map is
    twice as large (taps at strides 2, 4, 8): four times the activations for the same
    parameters. That is what a microcontroller cannot afford and a teacher can; thin streaks and
    ragged edges are what the stride-2 stem loses (see the `mobile_hr` teacher).
    """
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 (the student downsamples 16x), got {image_size}.")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inputs)
    x = _conv_bn_relu(
        x,
        keras.layers.Conv2D(round(_STEM_FILTERS * width), 3, strides=stem_stride, padding="same", use_bias=False,
                            name="stem_conv"),
        "stem",
    )
    for i, (stride, filters, tap) in enumerate(_BLOCKS, start=1):
        filters = round(filters * width)
        x = _conv_bn_relu(
            x,
            keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"block{i}_dw"),
            f"block{i}_dw",
        )
        x = _conv_bn_relu(
            x, keras.layers.Conv2D(filters, 1, use_bias=False, name=f"block{i}_pw"), f"block{i}_pw"
        )
        if tap:
            x = keras.layers.Identity(name=tap)(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    logits = keras.layers.Dense(num_classes, name=LOGITS)(x)
    return keras.Model(inputs, logits, name=name)


def trainable_param_count(model: keras.Model) -> int:
    return int(sum(keras.ops.size(w) for w in model.trainable_weights))


def student_param_table(model: keras.Model) -> list:
    """(layer name, trainable parameters) for every layer that has any: the docstring's table."""
    rows = []
    for layer in model.layers:
        n = trainable_param_count(layer)
        if n:
            rows.append((layer.name, n))
    return rows


assert set(FEATURE_TAPS) == {tap for _, _, tap in _BLOCKS if tap}
