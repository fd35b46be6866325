"""The images an export reads, decoded and preprocessed once per split.

An export fine-tunes on the training split while pruning (and in QAT), computes the teachers'
targets and the BatchNorm statistics on it, calibrates the integer models on some of its
images, measures validation accuracy before and after pruning, and checks every converted model.
All of them read the same pixels, THE preprocessing (`data.tf_datasets.preprocess_image`:
decode, optional border crop, antialiased resize), so each split is decoded once here into an
in-memory `Split` of uint8 [N, S, S, 3] images that the export's stages slice.

Memory: N * S * S * 3 bytes per split (128x128: 48 KiB an image, 10,000 training images 0.5 GB),
what the fine-tuning's `tf.data` cache of the training images holds as well.
"""

from __future__ import annotations

import numpy as np

from keras_endokd.data.source import DatasetSource, Split
from keras_endokd.data.tf_datasets import image_dataset

SPLITS = ("train", "val", "test")


def preprocessed(split: Split, image_size: int, crop_border: bool = False) -> Split:
    """`split` with its images decoded and preprocessed in memory: uint8 [N, S, S, 3]."""
    shape = (image_size, image_size, 3)
    if split.images is not None and split.images.shape[1:] == shape and not crop_border:
        return split  # already the model's input pixels
    images = np.empty((len(split), *shape), np.uint8)
    start = 0
    for batch in image_dataset(split, image_size, crop_border).batch(256).as_numpy_iterator():
        images[start:start + len(batch)] = batch
        start += len(batch)
    return Split(split.labels, images=images)


def preprocessed_splits(source: DatasetSource, image_size: int,
                        crop_border: bool = False) -> dict:
    """{"train", "val", "test"}: each of `source`'s splits as `preprocessed` gives it."""
    return {name: preprocessed(source.splits[name], image_size, crop_border) for name in SPLITS}
