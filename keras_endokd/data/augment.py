"""Training-split augmentation: one stateless function of (image, seed), run inside `tf.data`.

Endoscopy frames have no canonical orientation (the scope rotates freely), so all eight
90-degree rotations and mirrors are label-preserving: random horizontal and vertical flips plus a
random transpose produce exactly that group. Colour jitter is mild because colour is a cue here
(blue dye, red inflammation): a strong hue shift would turn a dyed polyp into something else.

Why stateless: every draw is a function of the image's own seed only, never of a random
generator's state, so a parallel `tf.data` map gives the same pixels in every process and every
run. That is what lets two arms of a comparison see identical augmented inputs (the fresh stream
of `tf_datasets.make_dataset` and the views of `distill.teacher_cache` alike). Keras' random
preprocessing layers keep a stateful generator, and in a parallel map the order in which images
take its draws changes from run to run.
"""

from __future__ import annotations

import tensorflow as tf

# The colour jitter's ranges, on pixels in [0, 1]: brightness adds up to +-0.1 (+-25.5 levels);
# contrast scales each channel's distance to its mean by 0.9-1.1; saturation scales by 2/3-3/2;
# hue turns by at most 0.01 of the colour wheel (3.6 degrees).
BRIGHTNESS_DELTA = 0.1
CONTRAST_RANGE = (0.9, 1.1)
SATURATION_RANGE = (2.0 / 3.0, 1.5)
HUE_DELTA = 0.01

# What a stored view depends on besides its image and seed; part of the teacher cache's key, so a
# change here renders the views again rather than reading views of another augmentation.
SETTINGS = {
    "geometry": "flip left-right, flip up-down, transpose; p=0.5 each",
    "brightness_delta": BRIGHTNESS_DELTA, "contrast": CONTRAST_RANGE,
    "saturation": SATURATION_RANGE, "hue_delta": HUE_DELTA,
    "draws": "stateless, tf.random.experimental.stateless_split(seed, 7)",
}


def augment_image(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """float32 RGB [S, S, 3] in [0, 255], int seed [2] -> float32 RGB [S, S, 3] in [0, 255].

    The same (image, seed) always gives the same output, bit for bit. Square images only (the
    transpose). Flips and the transpose each happen with probability 0.5, then brightness,
    contrast, saturation and hue in that order, each clipped back to the pixel range.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 7)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    image = tf.image.stateless_random_flip_up_down(image, seeds[1])
    transpose = tf.random.stateless_uniform([], seeds[2]) < 0.5
    image = tf.cond(transpose, lambda: tf.transpose(image, (1, 0, 2)), lambda: image)
    x = image / 255.0
    x = tf.clip_by_value(tf.image.stateless_random_brightness(x, BRIGHTNESS_DELTA, seeds[3]), 0.0, 1.0)
    x = tf.clip_by_value(tf.image.stateless_random_contrast(x, *CONTRAST_RANGE, seeds[4]), 0.0, 1.0)
    x = tf.clip_by_value(tf.image.stateless_random_saturation(x, *SATURATION_RANGE, seeds[5]), 0.0, 1.0)
    x = tf.clip_by_value(tf.image.stateless_random_hue(x, HUE_DELTA, seeds[6]), 0.0, 1.0)
    return x * 255.0


def image_seeds(seed: int) -> tf.data.Dataset:
    """An endless dataset of int64 seeds [2], one per image, new every epoch, fixed by `seed`.

    Zipped with a training stream, each image of each epoch gets its own seed for
    `augment_image`; `rerandomize_each_iteration` makes epoch k's seeds differ from epoch j's and
    be the same in every run with this `seed`.
    """
    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
