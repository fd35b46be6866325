"""The images an export reads, decoded and preprocessed once per split.

An export fine-tunes on the training split while pruning (and in QAT), computes the teachers'
targets and the BatchNorm statistics on it, calibrates the integer models on some of its
images, measures validation accuracy before and after pruning, and checks every converted model.
All of them read the same pixels, THE preprocessing (`data.tf_datasets.preprocess_image`:
decode, optional border crop, antialiased resize), so each split is decoded once here into an
in-memory `Split` of uint8 [N, S, S, 3] images that the export's stages slice.

Agreement between a converted model and its Keras model needs no labels, so it is measured on
images of every split (`agreement_images`): up to 1,024, enough for a Wilson interval about
+-0.6 points wide at 99% agreement, few enough that the checks take seconds.

Memory: N * S * S * 3 bytes per split (128x128: 48 KiB an image, 10,000 training images 0.5 GB),
what the fine-tuning's `tf.data` cache of the training images holds as well.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from keras_endokd.data.source import DatasetSource, Split
from keras_endokd.data.tf_datasets import image_dataset

SPLITS = ("train", "val", "test")
AGREEMENT_IMAGES = 1024


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


def preprocessed_splits(source: DatasetSource, image_size: int, crop_border: bool = False,
                        done: Optional[dict] = None) -> dict:
    """{"train", "val", "test"}: each of `source`'s splits as `preprocessed` gives it; `done`
    holds splits a caller has already preprocessed this way (by name), which are used as they are."""
    done = done or {}
    return {name: done[name] if name in done else preprocessed(source.splits[name], image_size, crop_border)
            for name in SPLITS}


def agreement_images(splits: dict, count: int = AGREEMENT_IMAGES, seed: int = 0) -> tuple:
    """Up to `count` images of all splits, drawn without replacement (seeded), in split order.

    Returns (uint8 [n, S, S, 3], {"train": k, "val": k, "test": k}); every image when the
    splits hold `count` or fewer.
    """
    sizes = [len(splits[name]) for name in SPLITS]
    chosen = np.sort(np.random.default_rng(seed).permutation(sum(sizes))[:count])
    offsets = np.cumsum([0, *sizes])
    parts, counts = [], {}
    for name, low, high in zip(SPLITS, offsets[:-1], offsets[1:]):
        rows = chosen[(chosen >= low) & (chosen < high)] - low
        parts.append(splits[name].images[rows])
        counts[name] = int(len(rows))
    return np.concatenate(parts), counts
