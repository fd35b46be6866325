"""Datasets: the embedded synthetic default, Kvasir-v2, Hyper-Kvasir and any image folder.

Every loader returns a `DatasetSource` (class names and train/val/test splits); `make_dataset`
turns a split into a `tf.data` pipeline. `load_dataset(name, ...)` is the single entry point the
command lines use; for real data it also decodes every image once (`checks.check_images`), so
that a bad file is reported (or, with `on_bad_image="error"`, fatal) before any training.
"""

from __future__ import annotations

from typing import Optional

from keras_endokd.data.source import (
    BadImageError,
    DatasetLayoutError,
    DatasetSource,
    Split,
    validate_on_bad_image,
)

DATASET_NAMES = ("synthetic", "kvasir_v2", "hyper_kvasir", "folder")


def load_dataset(
    name: str = "synthetic",
    data_dir: Optional[str] = None,
    split_file: Optional[str] = None,
    fold: int = 0,
    seed: int = 0,
    image_size: int = 128,
    val_fraction: float = 0.1,
    on_bad_image: str = "skip",
    check_splits: bool = True,
) -> DatasetSource:
    """Loads a dataset by name; real datasets need `data_dir`, the synthetic one nothing.

    `fold` selects the held-out test fold of k-fold datasets (Kvasir-v2, Hyper-Kvasir; 2 folds by
    default, the number of folds in `split_file` for Hyper-Kvasir). The synthetic images are
    generated at `image_size`, so nothing is resized.

    `on_bad_image`: "skip" leaves files that do not decode (and empty image files, files a split
    file lists that are missing) out of the splits and lists them in `skipped`; "error" raises
    BadImageError listing them. Layout errors (no class folders, a malformed split file) raise
    DatasetLayoutError either way, as does a class without an image in some split (after the
    bad files are left out): every class must be trained, validated and tested
    (`check_splits=False` skips this check, for `data describe`).
    """
    validate_on_bad_image(on_bad_image)
    if name not in DATASET_NAMES:
        raise ValueError(f"Unknown --dataset={name!r}; expected one of {', '.join(DATASET_NAMES)}.")
    if name == "synthetic":
        from keras_endokd.data import synthetic

        return synthetic.load(image_size=image_size, seed=seed)
    if not data_dir:
        raise ValueError(f"--dataset={name} needs --data_dir, the folder the dataset was unpacked to.")
    if split_file and name != "hyper_kvasir":
        raise ValueError(f"--split_file applies to --dataset=hyper_kvasir only, not {name}.")
    if name == "kvasir_v2":
        from keras_endokd.data import kvasir

        source = kvasir.load(data_dir, fold=fold, val_fraction=val_fraction, seed=seed)
    elif name == "hyper_kvasir":
        from keras_endokd.data import hyper_kvasir

        source = hyper_kvasir.load(
            data_dir, split_file=split_file, fold=fold, val_fraction=val_fraction, seed=seed
        )
    else:
        from keras_endokd.data import folder

        source = folder.load(data_dir, val_fraction=val_fraction, seed=seed)
    from keras_endokd.data import checks  # imports TensorFlow: only for real data

    source = checks.check_images(source, on_bad_image)
    return source.check_every_class_in_every_split() if check_splits else source


__all__ = [
    "BadImageError", "DATASET_NAMES", "DatasetLayoutError", "DatasetSource", "Split",
    "load_dataset",
]
