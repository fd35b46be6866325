"""Kvasir-v2 (Pogorelov et al., MMSys 2017): 8 classes of ~1,000 JPEGs (720x576 to 1920x1072).

The published archive unpacks to `kvasir-dataset-v2/<class>/*.jpg`. Kvasir-v2 has no official
split, so folds are stratified and seeded (`keras_endokd.data.splits`) over the sorted listing:
the same files give the same folds on every machine.
"""

from __future__ import annotations

import os
from typing import Sequence

from keras_endokd.data.files import existing_folder, scan_class_folders
from keras_endokd.data.folder import source_from_class_lists
from keras_endokd.data.source import DatasetLayoutError, DatasetSource

NAME = "kvasir_v2"
FOLDER_NAME = "kvasir-dataset-v2"
CLASS_NAMES = (
    "dyed-lifted-polyps",
    "dyed-resection-margins",
    "esophagitis",
    "normal-cecum",
    "normal-pylorus",
    "normal-z-line",
    "polyps",
    "ulcerative-colitis",
)


def find_root(data_dir) -> str:
    """The `kvasir-dataset-v2` folder: `data_dir` itself or its sub-folder of that name."""
    data_dir = existing_folder(data_dir)
    nested = os.path.join(data_dir, FOLDER_NAME)
    return nested if os.path.isdir(nested) else data_dir


def load(
    data_dir,
    fold: int = 0,
    num_folds: int = 2,
    val_fraction: float = 0.1,
    seed: int = 0,
    split: str = "kfold",
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> DatasetSource:
    """Load Kvasir-v2 from `data_dir` (the `kvasir-dataset-v2` folder or the folder holding it).

    `split="kfold"`: fold `fold` of `num_folds` stratified folds is test, `val_fraction` of the
    rest is validation. `split="ratio"`: each class cut by `fractions` (train, val, test).
    The 8 class folders must all be there and nothing else: a missing or extra folder usually
    means the wrong folder was given, and silently training on 7 classes would go unnoticed.
    """
    root = find_root(data_dir)
    class_names, per_class, skipped = scan_class_folders(root)
    missing = [os.path.join(root, c) for c in CLASS_NAMES if c not in class_names]
    extra = [os.path.join(root, c) for c in class_names if c not in CLASS_NAMES]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"missing class folders {missing}")
        if extra:
            problems.append(f"unexpected folders {extra}")
        raise DatasetLayoutError(
            f"{root} is not a Kvasir-v2 folder: {'; '.join(problems)}. Expected "
            f"<data_dir>/{FOLDER_NAME}/<class>/*.jpg (or that folder itself) with exactly the "
            f"class folders {list(CLASS_NAMES)}."
        )
    return source_from_class_lists(
        NAME, root, class_names, per_class, skipped,
        split=split, fractions=fractions, fold=fold, num_folds=num_folds,
        val_fraction=val_fraction, seed=seed,
    )
