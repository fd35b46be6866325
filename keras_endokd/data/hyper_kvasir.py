"""Hyper-Kvasir labelled images (Borgli et al., Scientific Data 7:283, 2020): 23 classes.

The download unpacks to `labeled-images/{tract}/{classification}/{finding}/{uuid}.jpg`; the class
is the `{finding}` folder. Classes are heavily imbalanced (6 to 1,148 images).

Official splits (`2_fold_split.csv`, `5_fold_split.csv`, `file-name;class-name;split-index`) are
joined to the images ON THE FILE NAME (a unique uuid), never on the class name: the split files
were written from an older folder layout and spell classes differently (`polyp` vs `polyps`,
`hemorroids` vs `hemorrhoids`, `oesophagitis-a` vs `esophagitis-a`, `normal-cecum` vs `cecum`, ...).
The label always comes from the folder the image is in.

So a split file's class-name column is never checked against the folders (an "unknown" class
there is usually just the old spelling): a row whose file is found takes the class of its folder,
and a row whose file is not found is reported in `skipped` as missing (a bad image, fatal under
`--on_bad_image=error`), or is a DatasetLayoutError when over 1% of the rows are missing (the
wrong folder or release). A row's file-name may hold a relative path, never one that leaves the
dataset root (`files.safe_join`): `..` and absolute paths outside it are a DatasetLayoutError.

Without a split file the folds are cut the official way (`splits.consecutive_folds`) from each
class's sorted listing. That reproduces the official fold SIZES exactly but not the official
membership: the official script cut unsorted `glob` (directory) order, which cannot be recovered
from the files. For numbers comparable with published results, pass the official split file.
"""

from __future__ import annotations

import csv
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from keras_endokd.data import splits as splits_lib
from keras_endokd.data.files import Skipped, existing_folder, list_images, safe_join
from keras_endokd.data.source import DatasetLayoutError, DatasetSource, Split

NAME = "hyper_kvasir"
FOLDER_NAME = "labeled-images"
SPLIT_HEADER = ("file-name", "class-name", "split-index")
LAYOUT = f"{FOLDER_NAME}/{{tract}}/{{classification}}/{{finding}}/{{image}}"
# Known metadata in labeled-images/, not reported as skipped.
METADATA_FILES = frozenset({"image-labels.csv"})
# More missing rows than this means the wrong folder (or release), not a few lost files.
MAX_MISSING_FRACTION = 0.01


def find_root(data_dir) -> str:
    """The `labeled-images` folder: `data_dir` itself or its sub-folder of that name."""
    data_dir = existing_folder(data_dir)
    nested = os.path.join(data_dir, FOLDER_NAME)
    return nested if os.path.isdir(nested) else data_dir


def _finding_folders(root: str, skipped: List[Skipped]) -> List[str]:
    """Folders exactly 3 levels below `root`; anything else met on the way goes to `skipped`."""
    level = [root]
    for depth in range(3):
        below = []
        for folder in level:
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if os.path.isdir(path) and not name.startswith("."):
                    below.append(path)
                elif not (depth == 0 and name in METADATA_FILES):
                    skipped.append((path, f"outside the finding folders (expected {LAYOUT})"))
        level = below
    return level


def scan_tree(root: str) -> Tuple[List[str], List[List[str]], List[Skipped]]:
    """(sorted class names, sorted image paths per class, skipped) of a labeled-images tree."""
    skipped: List[Skipped] = []
    folders: Dict[str, str] = {}
    for folder in _finding_folders(root, skipped):
        finding = os.path.basename(folder)
        if finding in folders:
            raise DatasetLayoutError(
                f"Two folders for class {finding!r}: {folders[finding]} and {folder}."
            )
        folders[finding] = folder
    if not folders:
        raise DatasetLayoutError(f"{root}: no finding folders; expected {LAYOUT}.")
    class_names = sorted(folders)
    per_class, seen = [], {}
    for finding in class_names:
        images, not_images = list_images(folders[finding])
        skipped.extend(not_images)
        if not images:
            skipped.append((folders[finding], "empty class folder"))
        for path in images:
            name = os.path.basename(path)
            if name in seen:  # the join with split files is on file names: they must be unique
                raise DatasetLayoutError(
                    f"File name {name!r} appears twice: {seen[name]} and {path}."
                )
            seen[name] = path
        per_class.append(images)
    return class_names, per_class, skipped


def read_split_file(
    path, num_folds: Optional[int] = None
) -> Tuple[List[Tuple[int, str, int]], int]:
    """Rows `(line number, file name, split index)` of a split file, and its number of folds.

    The number of folds is max(split index) + 1, or `num_folds` when given (an index >= num_folds
    is then an error). Every fold must have rows.
    """
    path = os.fspath(path)
    rows, lines_by_name = [], {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=";")
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != SPLIT_HEADER:
            raise DatasetLayoutError(
                f"{path} line 1: header {';'.join(header or [])!r}, "
                f"expected {';'.join(SPLIT_HEADER)!r}."
            )
        for fields in reader:
            line = reader.line_num
            if not fields or fields == [""]:
                continue
            if len(fields) != 3:
                raise DatasetLayoutError(
                    f"{path} line {line}: {len(fields)} fields {';'.join(fields)!r}, expected 3 "
                    f"({';'.join(SPLIT_HEADER)})."
                )
            name, _, index_text = (x.strip() for x in fields)
            try:
                index = int(index_text)
            except ValueError:
                raise DatasetLayoutError(
                    f"{path} line {line}: split-index {index_text!r} is not an integer."
                ) from None
            if index < 0 or (num_folds is not None and index >= num_folds):
                allowed = f"0..{num_folds - 1}" if num_folds is not None else ">= 0"
                raise DatasetLayoutError(
                    f"{path} line {line}: split-index {index} out of range (expected {allowed})."
                )
            key = os.path.basename(name)  # the join is on file names (see the module docstring)
            if not key:
                raise DatasetLayoutError(f"{path} line {line}: empty file-name.")
            if key in lines_by_name:
                raise DatasetLayoutError(
                    f"{path} line {line}: {key!r} already listed on line {lines_by_name[key]}."
                )
            lines_by_name[key] = line
            rows.append((line, name, index))
    if not rows:
        raise DatasetLayoutError(f"{path}: no rows after the header.")
    found = num_folds if num_folds is not None else max(r[2] for r in rows) + 1
    empty = sorted(set(range(found)) - {r[2] for r in rows})
    if found < 2 or empty:
        raise DatasetLayoutError(
            f"{path}: split indices must number the folds 0..k-1 with k >= 2, every fold "
            f"non-empty; found {found} fold(s), empty: {empty}."
        )
    return rows, found


def _folds_from_split_file(
    split_file, rows: List[Tuple[int, str, int]], root: str, per_class: List[List[str]],
    skipped: List[Skipped],
) -> List[np.ndarray]:
    """Fold per image (-1: not listed) from split-file rows, joined on file names."""
    fold_of = {}
    for line, name, index in rows:
        key = os.path.basename(name)
        if key != name or key == "..":  # a row may hold a relative path, never one leaving the root
            try:
                safe_join(root, name)
            except DatasetLayoutError as e:
                raise DatasetLayoutError(f"{split_file} line {line}: {e}") from None
        fold_of[key] = (line, index)
    folds, found = [], set()
    for images in per_class:
        class_folds = np.full(len(images), -1, np.int64)
        for i, path in enumerate(images):
            entry = fold_of.get(os.path.basename(path))
            if entry is None:
                skipped.append((path, f"not listed in {split_file}"))
            else:
                class_folds[i] = entry[1]
                found.add(os.path.basename(path))
        folds.append(class_folds)
    missing = [(line, name) for name, (line, _) in fold_of.items() if name not in found]
    if len(missing) > MAX_MISSING_FRACTION * len(rows):
        first = ", ".join(name for _, name in missing[:5])
        raise DatasetLayoutError(
            f"{split_file}: {len(missing)} of {len(rows)} listed files are not under {root} "
            f"(first: {first}); is the data folder the labeled-images of the same release?"
        )
    for line, name in missing:
        skipped.append((name, f"listed in {split_file} line {line} but not found under {root}"))
    return folds


def load(
    data_dir,
    split_file=None,
    fold: int = 0,
    num_folds: Optional[int] = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DatasetSource:
    """Load the Hyper-Kvasir labelled images from `data_dir` (`labeled-images` or its parent).

    Args:
      split_file: path of an official split file (`2_fold_split.csv`, `5_fold_split.csv`), or None
        to cut the folds the official way from the sorted listing.
      fold: the test fold; `val_fraction` of the other folds is carved out as validation.
      num_folds: None means 2 without a split file and the file's number of folds with one.
    """
    root = find_root(data_dir)
    if split_file is not None:  # read first: a malformed file fails before the tree is walked
        rows, num_folds = read_split_file(split_file, num_folds)
    class_names, per_class, skipped = scan_tree(root)
    if split_file is not None:
        folds = _folds_from_split_file(split_file, rows, root, per_class, skipped)
    else:
        num_folds = 2 if num_folds is None else num_folds
        folds = [splits_lib.consecutive_folds(len(images), num_folds) for images in per_class]
    paths = [p for images in per_class for p in images]
    labels = np.repeat(np.arange(len(class_names)), [len(images) for images in per_class])
    folds = np.concatenate(folds)
    listed = folds >= 0  # images not named in the split file are in no split
    everything = Split(labels[listed], paths=[p for p, keep in zip(paths, listed) if keep])
    indices = splits_lib.fold_splits(
        folds[listed], labels[listed], fold, num_folds, val_fraction, seed
    )
    return DatasetSource(
        name=NAME,
        class_names=tuple(class_names),
        splits={split: everything.subset(idx) for split, idx in indices.items()},
        root=root,
        skipped=tuple(skipped),
    )
