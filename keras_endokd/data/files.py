"""Listing image files on disk the same way on every machine.

All real-data loaders list folders through these helpers, for two reasons:

* Order. Folds are cut from the listing, so the listing must not depend on the filesystem
  (`os.listdir` order differs between ext4, APFS and NTFS) or the locale. Names are sorted with a
  plain string sort (Unicode code points), which is the same everywhere.
* Nothing is dropped silently. A file that is not used (not an image, empty, hidden, outside a class
  folder) comes back as `(path, reason)` so that `DatasetSource.skipped` can report it.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from keras_endokd.data.source import DatasetLayoutError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

Skipped = Tuple[str, str]  # (path, reason)


def existing_folder(path) -> str:
    """`path` as an absolute path; DatasetLayoutError if it is not a folder."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise DatasetLayoutError(f"{path}: no such folder.")
    return path


def _sorted_entries(folder: str) -> List[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda e: e.name)


def _why_not_an_image(entry: os.DirEntry) -> Optional[str]:
    """Why a directory entry is not a usable image, or None if it is one."""
    if entry.name.startswith("."):
        return "hidden file"
    if entry.is_dir():
        return "sub-folder (images are not searched recursively)"
    if not entry.is_file():
        return "not a regular file (broken link?)"
    extension = os.path.splitext(entry.name)[1].lower()
    if extension not in IMAGE_EXTENSIONS:
        accepted = " ".join(sorted(IMAGE_EXTENSIONS))
        return f"not an image (extension {extension or 'none'!r}; accepted: {accepted})"
    if entry.stat().st_size == 0:
        return "empty file (0 bytes)"
    return None


def list_class_folders(root) -> List[str]:
    """Sorted names of the non-hidden sub-folders of `root`, one per class."""
    root = existing_folder(root)
    return [e.name for e in _sorted_entries(root) if e.is_dir() and not e.name.startswith(".")]


def list_images(folder) -> Tuple[List[str], List[Skipped]]:
    """Images directly inside `folder`: (sorted absolute paths, skipped (path, reason))."""
    folder = existing_folder(folder)
    images, skipped = [], []
    for entry in _sorted_entries(folder):
        path = os.path.join(folder, entry.name)
        reason = _why_not_an_image(entry)
        if reason is None:
            images.append(path)
        else:
            skipped.append((path, reason))
    return images, skipped


def scan_class_folders(root) -> Tuple[List[str], List[List[str]], List[Skipped]]:
    """A `<root>/<class>/<image>` tree: (class names, image paths per class, skipped).

    Class names are sorted (label = index). A class folder without images is kept (the class still
    exists, it just has no data here) and reported as "empty class folder"; files lying directly in
    `root` are reported too.
    """
    root = existing_folder(root)
    class_names, per_class, skipped = [], [], []
    for entry in _sorted_entries(root):
        path = os.path.join(root, entry.name)
        if entry.name.startswith("."):
            skipped.append((path, "hidden file or folder"))
        elif not entry.is_dir():
            skipped.append((path, "outside any class folder (expected <root>/<class>/<image>)"))
        else:
            images, not_images = list_images(path)
            class_names.append(entry.name)
            per_class.append(images)
            skipped.extend(not_images)
            if not images:
                skipped.append((path, "empty class folder"))
    return class_names, per_class, skipped


def safe_join(root, relative) -> str:
    """`root/relative`, resolved; DatasetLayoutError if it falls outside `root`.

    Paths read from split or label files are data, not trusted input: `..`, an absolute path or a
    symbolic link must not make a loader read (or report on) files outside the dataset.
    """
    real_root = os.path.realpath(os.fspath(root))
    joined = os.path.realpath(os.path.join(real_root, os.fspath(relative)))
    if os.path.commonpath([real_root, joined]) != real_root:
        raise DatasetLayoutError(
            f"{relative!r} points outside the dataset root {real_root} (resolves to {joined})."
        )
    return joined
