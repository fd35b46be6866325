"""What every dataset loader returns: class names and labelled splits.

Loaders (synthetic, Kvasir-v2, Hyper-Kvasir, image folder) differ only in how they find images and
split them; everything after that (decoding, resizing, augmentation, batching) is shared by
`keras_endokd.data.tf_datasets`. A split holds either file paths (real data, decoded lazily) or an
in-memory uint8 image array (the embedded synthetic data, which has no files).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

SPLIT_NAMES = ("train", "val", "test")


class DatasetLayoutError(ValueError):
    """A dataset folder or split file is not laid out as expected (names the path)."""


ON_BAD_IMAGE = ("skip", "error")


def validate_on_bad_image(on_bad_image: str) -> str:
    """`on_bad_image` itself; ValueError naming `--on_bad_image` if it is not "skip" or "error"."""
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(
            f"--on_bad_image={on_bad_image!r}: expected one of {', '.join(ON_BAD_IMAGE)} "
            "(skip: leave unreadable images out and report them; error: stop the run)."
        )
    return on_bad_image


# A skipped file is a "bad image" (fatal under `--on_bad_image=error`) when its reason starts with
# one of these: an image file that is empty or does not decode, or a file a split file lists that
# is not there. Files that were never meant to be images (other extensions, hidden files, files
# outside the class folders) are only reported: they are not data the run was promised.
BAD_IMAGE_REASONS = ("empty file", "unreadable image", "listed in ")


def is_bad_image(reason: str) -> bool:
    """Whether a `DatasetSource.skipped` reason marks a bad image (see BAD_IMAGE_REASONS)."""
    return reason.startswith(BAD_IMAGE_REASONS)


class BadImageError(DatasetLayoutError):
    """Bad images under `--on_bad_image=error`; `bad` holds them as (path, reason).

    The message names the first 10 and the count, so one run lists what to fix; the rest are in
    `bad`.
    """

    SHOWN = 10

    def __init__(self, bad: Sequence[Tuple[str, str]], root: Optional[str] = None):
        self.bad, self.root = tuple(bad), root
        lines = [f"  {path}: {reason}" for path, reason in self.bad[: self.SHOWN]]
        if len(self.bad) > self.SHOWN:
            lines.append(f"  ... and {len(self.bad) - self.SHOWN} more")
        where = f" in {root}" if root else ""
        super().__init__(
            f"{len(self.bad)} bad image file(s){where} (--on_bad_image=error):\n"
            + "\n".join(lines)
            + "\n--on_bad_image=skip would skip them and list them in the run report."
        )

    def __reduce__(self):  # picklable despite the custom __init__ (multiprocessing, pytest-xdist)
        return type(self), (self.bad, self.root)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: integer labels plus either image paths or in-memory images.

    Attributes:
      labels: int32 array [N], indices into the dataset's `class_names`.
      paths: N absolute file paths, or None for in-memory data.
      images: uint8 array [N, H, W, 3] (RGB), or None for file-based data.
    """

    labels: np.ndarray
    paths: Optional[Tuple[str, ...]] = None
    images: Optional[np.ndarray] = None

    def __post_init__(self):
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int32))
        if (self.paths is None) == (self.images is None):
            raise ValueError("A Split holds exactly one of `paths` or `images`.")
        if self.paths is not None:
            object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        n = len(self.paths) if self.paths is not None else len(self.images)
        if n != len(self.labels):
            raise ValueError(f"{n} images but {len(self.labels)} labels.")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> "Split":
        indices = np.asarray(indices, dtype=np.int64)
        if self.paths is not None:
            return Split(self.labels[indices], paths=tuple(self.paths[i] for i in indices))
        return Split(self.labels[indices], images=self.images[indices])


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """A dataset ready for `pipeline.make_dataset`: its classes and its splits.

    Attributes:
      name: registry name (`synthetic`, `kvasir_v2`, `hyper_kvasir`, `folder`).
      class_names: class names, index = label.
      splits: split name (`train`, `val`, `test`) -> Split.
      root: the data folder, or None for the embedded data.
      skipped: files that were found but left out, with why (never dropped silently).
    """

    name: str
    class_names: Tuple[str, ...]
    splits: Mapping[str, Split]
    root: Optional[str] = None
    skipped: Tuple[Tuple[str, str], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_weights(self, split: str = "train") -> dict:
        """Inverse-frequency weights (`n / (k * n_c)`), as Keras' `class_weight` expects.

        Hyper-Kvasir's classes range from 6 to 1,148 images; unweighted training ignores the rare
        ones. Classes absent from the split get weight 0.
        """
        counts = np.bincount(self.splits[split].labels, minlength=self.num_classes)
        total, present = counts.sum(), max(int((counts > 0).sum()), 1)
        return {
            i: (float(total) / (present * c) if c else 0.0) for i, c in enumerate(counts)
        }

    def empty_classes(self) -> list:
        """(split, class name, images of that class in all splits) for each class a split lacks."""
        totals = sum(np.bincount(s.labels, minlength=self.num_classes) for s in self.splits.values())
        return [(split_name, self.class_names[c], int(totals[c]))
                for split_name, split in self.splits.items()
                for c in np.flatnonzero(np.bincount(split.labels, minlength=self.num_classes) == 0)]

    def check_every_class_in_every_split(self) -> "DatasetSource":
        """Raises DatasetLayoutError naming each (split, class) without an image; returns self.

        A class missing from train cannot be learnt, and one missing from val or test is never
        evaluated: both stop the run before any training.
        """
        empty = self.empty_classes()
        if empty:
            lines = "\n".join(f"  class {name!r} has no image in the {split} split "
                               f"({total} image(s) in all splits)" for split, name, total in empty)
            raise DatasetLayoutError(
                f"{self.root or self.name}: every class needs at least one image in each of the "
                f"train, val and test splits:\n{lines}\nAdd images to these classes, or remove their "
                "folders (or their rows of the split file).")
        return self

    def describe(self) -> dict:
        """JSON-ready summary: class names, image counts per split and class, skipped files.

        `skipped_count` and `bad_image_count` (skipped files that are bad images, see
        `is_bad_image`) let a report show at a glance what `skipped` lists in full.
        """
        counts = {}
        for split_name, split in self.splits.items():
            per_class = np.bincount(split.labels, minlength=self.num_classes)
            counts[split_name] = {
                "total": int(len(split)),
                "per_class": {c: int(n) for c, n in zip(self.class_names, per_class)},
            }
        return {
            "dataset": self.name,
            "root": self.root,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "splits": counts,
            "classes_missing_from_a_split": [{"split": split, "class": name}
                                             for split, name, _ in self.empty_classes()],
            "skipped_count": len(self.skipped),
            "bad_image_count": sum(is_bad_image(r) for _, r in self.skipped),
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }
