"""A user's own `<root>/<class>/<image>` folder as a DatasetSource.

Class names are the sorted sub-folder names (label = index). Splits are stratified and seeded
(`keras_endokd.data.splits`); by default a 70/10/20 ratio split, or k-fold with `split="kfold"`.

A sub-folder without images is not a class: it is dropped, with a warning naming it (and listed
in `skipped`), because a class without images would give the model an output no example ever
trains. Every class left must then have an image in every split (`load_dataset` checks it).
"""

from __future__ import annotations

import logging
from typing import List, Sequence

import numpy as np

from keras_endokd.data import splits as splits_lib
from keras_endokd.data.files import Skipped, existing_folder, scan_class_folders
from keras_endokd.data.source import DatasetLayoutError, DatasetSource, Split

NAME = "folder"
_log = logging.getLogger(__name__)


def source_from_class_lists(
    name: str,
    root: str,
    class_names: Sequence[str],
    per_class: Sequence[Sequence[str]],
    skipped: List[Skipped],
    **split_args,
) -> DatasetSource:
    """A DatasetSource from image paths grouped by class, split by `splits.split_indices`."""
    paths = [p for class_paths in per_class for p in class_paths]
    labels = np.repeat(np.arange(len(class_names)), [len(p) for p in per_class])
    everything = Split(labels, paths=paths)
    indices = splits_lib.split_indices(labels, **split_args)
    return DatasetSource(
        name=name,
        class_names=tuple(class_names),
        splits={split: everything.subset(idx) for split, idx in indices.items()},
        root=root,
        skipped=tuple(skipped),
    )


def load(
    data_dir,
    split: str = "ratio",
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    fold: int = 0,
    num_folds: int = 2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DatasetSource:
    """Load `<data_dir>/<class>/<image>`.

    Args:
      split: "ratio" (cut each class by `fractions` = train, val, test) or "kfold" (stratified
        `num_folds` folds; fold `fold` is test and `val_fraction` of the rest is validation).
    """
    root = existing_folder(data_dir)
    class_names, per_class, skipped = scan_class_folders(root)
    layout = f"expected {root}/<class>/<image>, one sub-folder per class"
    if not class_names:
        raise DatasetLayoutError(f"{root}: no class folders; {layout}.")
    if not any(per_class):
        raise DatasetLayoutError(f"{root}: the class folders hold no images; {layout}.")
    empty = [name for name, images in zip(class_names, per_class) if not images]
    if empty:
        _log.warning("%s: dropped %d class folder(s) without images (not a class): %s",
                     root, len(empty), ", ".join(empty))
        kept = [(name, images) for name, images in zip(class_names, per_class) if images]
        class_names, per_class = [k[0] for k in kept], [k[1] for k in kept]
    if len(class_names) < 2:
        raise DatasetLayoutError(
            f"{root}: only 1 class folder ({class_names[0]!r}); a classifier needs 2 or more; "
            f"{layout}."
        )
    return source_from_class_lists(
        NAME, root, class_names, per_class, skipped,
        split=split, fractions=fractions, fold=fold, num_folds=num_folds,
        val_fraction=val_fraction, seed=seed,
    )
