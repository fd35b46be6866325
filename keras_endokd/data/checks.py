"""The image check: every file of every split is decoded once, before any training step.

Why: `tf.data` stops at the first file it cannot decode, so one truncated JPEG met in epoch 7 kills
a run hours in. The check decodes each file with `pipeline.decode_image`, the decoder training
uses, so a file that passes decodes in training too. Files that fail leave their split and join
`DatasetSource.skipped` with the reason, or, under `on_bad_image="error"`, stop the run with
`BadImageError`.

Cost: the decode itself, in parallel in a `tf.data` graph (no Python per file). On 2 shared CPU
cores, 2,000 720x576 JPEGs (133 KB each) took ~5 s, ~400-500 images/s; it also warms the OS file
cache for the first epoch. Only the files that fail are decoded a second time, eagerly, to get
TensorFlow's error message for the report.

Files are removed after the folds are cut, not before: a good file then stays in the same fold
whether or not other files are broken.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Dict, Optional, Sequence

import tensorflow as tf

from keras_endokd.console import progress

from keras_endokd.data.tf_datasets import decode_image
from keras_endokd.data.source import (
    BadImageError,
    DatasetLayoutError,
    DatasetSource,
    is_bad_image,
    validate_on_bad_image,
)

_log = logging.getLogger(__name__)

# Leading bytes -> what the file is, to say more than TensorFlow's "Invalid JPEG data".
_SIGNATURES = (
    (b"\xff\xd8\xff", "truncated or corrupt JPEG"),
    (b"\x89PNG\r\n\x1a\n", "truncated or corrupt PNG"),
    (b"GIF8", "corrupt GIF"),
    (b"BM", "corrupt BMP"),
    (b"II*\x00", "TIFF, which TensorFlow cannot decode; convert it to PNG or JPEG"),
    (b"MM\x00*", "TIFF, which TensorFlow cannot decode; convert it to PNG or JPEG"),
)


def _kind_of(path: str) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError as error:
        return f"cannot read the file ({error.strerror})"
    if not head:
        return "empty file"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "corrupt WebP"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    return "not a JPEG, PNG, GIF, BMP or WebP file"


def _first_line(error: tf.errors.OpError) -> str:
    """TensorFlow's message without the eager '{{function_node ...}}' prefix and '[Op:...]' tag."""
    line = (error.message or type(error).__name__).strip().splitlines()[0]
    line = re.sub(r"^\{\{[^}]*\}\}\s*", "", line)
    return re.sub(r"\s*\[Op:\w+\].*$", "", line)


def why_unreadable(path: str) -> Optional[str]:
    """None if `decode_image` decodes the file, else "unreadable image (<what>: <TF's error>)"."""
    try:
        decode_image(tf.io.read_file(path))
        return None
    except tf.errors.OpError as error:
        return f"unreadable image ({_kind_of(path)}: {_first_line(error)})"


def find_unreadable(paths: Sequence[str], batch_size: int = 256) -> Dict[str, str]:
    """{path: reason} for the files `pipeline.decode_image` cannot decode.

    All files are decoded in a parallel `tf.data` map whose failing elements are dropped
    (`ignore_errors`); the indices that come back are the files that decode. The few others are
    decoded once more, eagerly, for the reason; one that then decodes (a transient failure such
    as running out of memory) is kept.
    """
    paths = list(paths)
    if not paths:
        return {}

    def decodes(index, path):
        return index, tf.shape(decode_image(tf.io.read_file(path)))[0]

    ds = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    ds = ds.map(decodes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.ignore_errors().batch(batch_size)
    decoded = set()
    with progress(len(paths), "checking that every image decodes") as bar:
        for indices, _ in ds.as_numpy_iterator():
            decoded.update(indices.tolist())
            bar.update(len(indices))
        bar.update(len(paths) - len(decoded))  # the files that failed count as checked too
    reasons = {paths[i]: why_unreadable(paths[i]) for i in range(len(paths)) if i not in decoded}
    return {path: reason for path, reason in reasons.items() if reason is not None}


def check_images(source: DatasetSource, on_bad_image: str = "skip") -> DatasetSource:
    """`source` with the files that do not decode removed from its splits and reported.

    Args:
      on_bad_image: "skip" (remove and report in `skipped`) or "error" (raise BadImageError if
        any skipped file is a bad image: unreadable here, empty, or listed but missing).
    Raises:
      DatasetLayoutError if no file decodes at all (the wrong folder, or an unsupported format).
    """
    validate_on_bad_image(on_bad_image)
    file_splits = {name: s for name, s in source.splits.items() if s.paths is not None}
    paths = sorted({p for s in file_splits.values() for p in s.paths})
    unreadable = find_unreadable(paths)
    skipped = tuple(source.skipped) + tuple((p, unreadable[p]) for p in paths if p in unreadable)
    if on_bad_image == "error":
        bad = [(p, r) for p, r in skipped if is_bad_image(r)]
        if bad:
            raise BadImageError(bad, source.root)
    if paths and len(unreadable) == len(paths):
        first = "\n".join(f"  {p}: {unreadable[p]}" for p in paths[:5])
        raise DatasetLayoutError(
            f"{source.root}: none of the {len(paths)} images decode; first:\n{first}"
        )
    if unreadable:
        _log.warning(
            "%s: skipped %d unreadable image(s) (listed in the report), e.g. %s: %s",
            source.root, len(unreadable), *next(iter(unreadable.items())),
        )
    splits = dict(source.splits)
    for name, split in file_splits.items():
        keep = [i for i, p in enumerate(split.paths) if p not in unreadable]
        if len(keep) < len(split):
            splits[name] = split.subset(keep)
    return dataclasses.replace(source, splits=splits, skipped=skipped)
