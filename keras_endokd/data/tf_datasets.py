"""From a `Split` to a `tf.data` pipeline of (image, label) batches, and the one preprocessing.

`preprocess_image` is THE preprocessing: training, evaluation, export checks and `predict` (Keras
and TFLite alike) all call it, so a deployed model sees exactly what the student saw. Models take
float RGB pixel values in [0, 255] and normalize inside themselves, so the deployed uint8/int8
input is the camera pixel.

Pipeline order, for speed: decode and resize in parallel, cache the small resized uint8 images
(not the full-size JPEGs) in memory, then shuffle, augment each image with its own seed (stateless:
the same draws in every run, `data.augment`), batch and prefetch.
"""

from __future__ import annotations

import hashlib

import tensorflow as tf

from keras_endokd.data.augment import augment_image, image_seeds
from keras_endokd.data.source import Split

AUTOTUNE = tf.data.AUTOTUNE

# A pixel counts as "inside the field of view" above this brightness (0-255); the black border of
# an endoscopy frame sits well below it, and dark mucosa rarely fills whole rows at this level.
_BORDER_THRESHOLD = 24.0
_BORDER_MIN_FRACTION = 0.1


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP/WebP bytes -> uint8 RGB [H, W, 3]; THE decoder of every file.

    The format is read from the bytes, not the file name. Grayscale, palette and RGBA images come
    out as RGB (alpha dropped), CMYK JPEGs too (TensorFlow converts them), the first frame of a GIF.
    Decoding straight to uint8 (measured, TF 2.21): 16-bit PNGs keep their high byte, identical to
    decoding at uint16 and shifting right by 8 for all 65,536 values; an 8000x6000 JPEG peaks at
    0.57 GB instead of 1.13 GB and decodes ~4x faster; WebP decodes at all (uint16 is refused).
    `keras_endokd.data.checks` runs this same function on every file before training.
    """
    return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)


def crop_black_border(image: tf.Tensor) -> tf.Tensor:
    """Crops the endoscope's black surround to the bounding box of the bright field of view.

    Rows/columns with fewer than 10% bright pixels are border (or overlay text on black). An
    image with no bright region (all dark) is returned unchanged rather than cropped to nothing.
    """
    bright = tf.reduce_max(tf.cast(image, tf.float32), axis=-1) > _BORDER_THRESHOLD
    rows = tf.reduce_mean(tf.cast(bright, tf.float32), axis=1) > _BORDER_MIN_FRACTION
    cols = tf.reduce_mean(tf.cast(bright, tf.float32), axis=0) > _BORDER_MIN_FRACTION
    row_idx = tf.where(rows)[:, 0]
    col_idx = tf.where(cols)[:, 0]

    def crop():
        top, bottom = tf.reduce_min(row_idx), tf.reduce_max(row_idx) + 1
        left, right = tf.reduce_min(col_idx), tf.reduce_max(col_idx) + 1
        return image[top:bottom, left:right]

    return tf.cond(tf.logical_and(tf.size(row_idx) > 1, tf.size(col_idx) > 1), crop, lambda: image)


def preprocess_image(image: tf.Tensor, image_size: int, crop_border: bool = False) -> tf.Tensor:
    """uint8 RGB [H, W, 3] of any size -> uint8 RGB [image_size, image_size, 3].

    The frame is squashed to a square (the Kvasir literature does the same) with antialiasing, so
    1920x1072 frames are averaged down rather than aliased.
    """
    image = tf.convert_to_tensor(image)
    if crop_border:
        image = crop_black_border(image)
    resized = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def load_and_preprocess(path: tf.Tensor, image_size: int, crop_border: bool = False) -> tf.Tensor:
    return preprocess_image(decode_image(tf.io.read_file(path)), image_size, crop_border)


def image_dataset(split: Split, image_size: int, crop_border: bool = False) -> tf.data.Dataset:
    """Unbatched, unshuffled uint8 images [S, S, 3] of a split, in the split's order."""
    if split.images is not None:
        ds = tf.data.Dataset.from_tensor_slices(split.images)
        if split.images.shape[1:3] != (image_size, image_size) or crop_border:
            ds = ds.map(lambda im: preprocess_image(im, image_size, crop_border), AUTOTUNE)
        return ds
    paths = tf.data.Dataset.from_tensor_slices(list(split.paths))
    return paths.map(
        lambda p: load_and_preprocess(p, image_size, crop_border),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


def make_dataset(
    split: Split,
    image_size: int,
    batch_size: int = 32,
    training: bool = False,
    seed: int = 0,
    augment: bool = True,
    crop_border: bool = False,
    cache: bool = True,
) -> tf.data.Dataset:
    """(float32 images [B, S, S, 3] in [0, 255], int32 labels [B]) batches.

    Training pipelines shuffle (seeded, reshuffled each epoch) and augment (new draws each epoch,
    the same in every run with this `seed`); evaluation pipelines keep the split's order so
    predictions line up with `split.labels`.
    """
    images = image_dataset(split, image_size, crop_border)
    ds = tf.data.Dataset.zip(images, tf.data.Dataset.from_tensor_slices(split.labels))
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(min(len(split), 10_000), seed=seed, reshuffle_each_iteration=True)
    if training and augment:
        ds = tf.data.Dataset.zip(ds, image_seeds(seed + 2)).map(
            lambda xy, s: (augment_image(tf.cast(xy[0], tf.float32), s), xy[1]),
            num_parallel_calls=AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size)
    else:
        ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def stream_fingerprint(dataset: tf.data.Dataset, epochs: int = 2) -> str:
    """sha256 of the first `epochs` epochs of (image, label) batches, pixels and labels alike.

    Two runs whose training pipelines give the same fingerprint trained on identical inputs.
    """
    h = hashlib.sha256()
    for _ in range(epochs):
        for x, y in dataset:
            h.update(x.numpy().tobytes())
            h.update(y.numpy().tobytes())
    return h.hexdigest()
