"""Training-split augmentation, as Keras preprocessing layers run inside `tf.data`.

Endoscopy frames have no canonical orientation (the scope rotates freely), so all eight
90-degree rotations and mirrors are label-preserving: random horizontal and vertical flips plus a
random transpose produce exactly that group. Colour jitter is mild because colour is a cue here
(blue dye, red inflammation): a strong hue shift would turn a dyed polyp into something else.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_endokd")
class RandomTranspose(keras.layers.Layer):
    """Swaps height and width of each image with probability 0.5 (square images only).

    With `RandomFlip("horizontal_and_vertical")` this yields all eight 90-degree rotations and
    mirrors. Written with `tf` ops because it runs inside `tf.data` map functions.
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed

    def call(self, images, training=True):
        if not training:
            return images
        images = tf.convert_to_tensor(images)
        if images.shape.rank == 3:
            return tf.squeeze(self.call(images[None], training=training), 0)
        flip = tf.random.uniform([tf.shape(images)[0], 1, 1, 1], seed=self.seed) < 0.5
        return tf.where(flip, tf.transpose(images, (0, 2, 1, 3)), images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def build_augmenter(seed: int = 0) -> keras.Sequential:
    """Flips, 90-degree rotations and mild colour jitter on float RGB batches in [0, 255]."""
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
            RandomTranspose(seed=seed + 1),
            keras.layers.RandomColorJitter(
                value_range=(0, 255),
                brightness_factor=0.1,
                contrast_factor=0.1,
                saturation_factor=(0.4, 0.6),
                hue_factor=0.02,
                seed=seed + 2,
            ),
        ],
        name="augment",
    )
