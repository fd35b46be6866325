"""Atomic file writing: a crash never leaves a half-written file that looks valid.

Every artifact (models, .tflite files, metrics, C arrays) is written to a temporary file in the
same folder and renamed over the target (`os.replace` is atomic on POSIX and Windows), so a
reader sees either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds.

    `suffix` keeps the extension for writers that insist on it (`model.save` needs `.keras`).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix or ".tmp", dir=folder)
    os.close(fd)
    # mkstemp creates 0600; a written file gets the usual mode (0644 under the common umask 022).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> str:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_text(path: str, text: str) -> str:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj) -> str:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n")


def save_model(model, path: str) -> str:
    """`model.save(path)` through a temporary `.keras` file."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
    return path


def _jsonable(value):
    """numpy scalars and arrays -> plain Python for json.dumps."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
