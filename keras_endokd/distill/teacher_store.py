"""Trained teachers, kept and reused across runs with the same data and settings.

Distillation runs differ in the student's losses, not in their teachers: `--kd=response` then
`--kd=relation` on the same data must not retrain three teachers. A teacher is stored under a key
hashing everything that determines it: the registry name, the training data (the split's file
paths and labels, or the pixels of in-memory images), the image size and preprocessing, and the
training settings. A change in any of them gives a new key, so a stale teacher is never used.

The default teachers of the embedded data ship inside the package (`SHIPPED_DIR`, as
`keras.applications` ships weights) under the same keys: the default run then starts distilling at
once, and a generator or setting change gives a key that no shipped file has, so they are trained
again rather than reused stale. `python -m experiments.build_teachers` rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Callable, Optional, Tuple

import keras
import numpy as np

from keras_endokd.data.source import DatasetSource

_STORE_VERSION = 1
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "pretrained")


def data_fingerprint(source: DatasetSource, splits=("train", "val")) -> str:
    """sha256 of the splits' contents (paths and labels, or image bytes and labels)."""
    h = hashlib.sha256(f"{source.name}|{','.join(source.class_names)}".encode())
    for name in splits:
        split = source.splits[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(split.labels).tobytes())
        if split.paths is not None:
            h.update("\n".join(split.paths).encode())
        else:
            h.update(np.ascontiguousarray(split.images).tobytes())
    return h.hexdigest()


class TeacherStore:
    """A folder of trained teachers: `<root>/<name>-<key>.keras` plus `<...>.json` (settings, scores)."""

    def __init__(self, root: str, shipped_dir: Optional[str] = SHIPPED_DIR):
        self.root, self.shipped_dir = root, shipped_dir

    def key(self, name: str, fingerprint: str, settings: dict) -> str:
        blob = json.dumps(
            {"v": _STORE_VERSION, "name": name, "data": fingerprint, "settings": settings},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def path(self, name: str, key: str) -> str:
        return os.path.join(self.root, f"{name}-{key}.keras")

    def load_or_train(
        self,
        name: str,
        fingerprint: str,
        settings: dict,
        train: Callable[[str], Tuple[keras.Model, dict]],
    ) -> Tuple[keras.Model, dict, bool]:
        """The stored teacher if there is one, else `train(backup_dir)`'s, stored.

        `backup_dir` is where `train` keeps its per-epoch checkpoint: a teacher whose training
        was killed continues from there in the next run with the same key, and the checkpoint
        is removed once the teacher is stored. A teacher whose `info` says `near_chance` is returned but not stored. Returns (model,
        info, reused).
        """
        from keras_endokd import atomic_files

        key = self.key(name, fingerprint, settings)
        path = self.path(name, key)
        info_path = path[: -len(".keras")] + ".json"
        for folder in (self.root, self.shipped_dir):
            if folder is None:
                continue
            found = os.path.join(folder, os.path.basename(path))
            found_info = found[: -len(".keras")] + ".json"
            if os.path.isfile(found) and os.path.isfile(found_info):
                model = keras.saving.load_model(found, safe_mode=True, compile=False)
                with open(found_info) as f:
                    info = json.load(f)
                return model, {**info, "path": found, "shipped": folder == self.shipped_dir}, True
        backup_dir = path[: -len(".keras")] + ".backup"
        model, info = train(backup_dir)
        shutil.rmtree(backup_dir, ignore_errors=True)
        if info.get("near_chance"):  # learnt nothing: never reused
            return model, {**info, "name": name, "key": key, "settings": settings, "path": None,
                           "stored": False}, False
        info = {**info, "name": name, "key": key, "settings": settings, "path": path, "stored": True}
        atomic_files.save_model(model, path)
        atomic_files.write_json(info_path, info)
        return model, info, False
