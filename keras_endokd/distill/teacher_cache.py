"""Teacher outputs computed once and reused every epoch: distillation without running teachers.

Frozen teachers cost most of a distillation step. Their outputs depend only on the input image,
so we precompute them. Augmentation would make every epoch's input new, so, following Beyer et
al. 2022 ("Knowledge distillation: a good teacher is patient and consistent"), each training
image gets a fixed number of augmented *views*, rendered once; teachers run on each view once;
each epoch the student sees one randomly drawn view of every image, with exactly the teacher
outputs of that view. Teacher and student always see the same pixels.

The views are also the fair input stream of a comparison: with no teacher graphs the cache holds
the views alone, and `dataset` draws the same order and the same views for the same seed whatever
the teachers, so the student alone (`--kd=none`) and every distilled arm see identical batches.

Storage: uint8 views [V, N, S, S, 3] and float16 teacher taps [V, N, ...], either in memory or
as memory-mapped `.npy` files under a folder keyed by everything that determines them (teachers'
weights, data, preprocessing, augmentation seed, views, taps), so a stale cache is never read
and a second run with the same teachers and data starts instantly. The `tf.data` pipeline
gathers whole batches with numpy (fast for both storages).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_endokd.console import progress
from keras_endokd.data.augment import augment_image
from keras_endokd.data.tf_datasets import image_dataset
from keras_endokd.data.source import Split
from keras_endokd.distill.distiller import IMAGE_KEY, TEACHERS_KEY

CACHE_MODES = ("auto", "memory", "disk", "off")
# `auto` keeps the cache in memory up to this size, else memory-maps it from disk.
AUTO_MEMORY_LIMIT_BYTES = 2 * 1024**3


def weights_fingerprint(models: Sequence[keras.Model]) -> str:
    h = hashlib.sha256()
    for model in models:
        h.update(model.name.encode())
        for w in model.weights:
            h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(w)).tobytes())
    return h.hexdigest()


def cache_key(teachers: Sequence[keras.Model], data_fingerprint: str, taps: Sequence[str], **settings) -> str:
    """Names a cache by everything its contents depend on; any change gives a new folder."""
    blob = json.dumps(
        {"teachers": weights_fingerprint(teachers), "data": data_fingerprint, "taps": sorted(taps), **settings},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# The markers a disk cache writes last: its views, and its teachers' outputs, are complete.
VIEWS_DONE, OUTPUTS_DONE = "views_complete.json", "complete.json"


def _mark(folder: str, marker: str, views_shape: tuple, **more) -> None:
    with open(os.path.join(folder, marker), "w") as f:
        json.dump({"views": views_shape[0], "images": views_shape[1], **more}, f)


def _complete(folder: str, marker: str, views_shape: tuple) -> bool:
    path = os.path.join(folder, marker)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        done = json.load(f)
    return (done.get("views"), done.get("images")) == tuple(views_shape[:2])


def _path(folder: str, name: str) -> str:
    """The `.npy` file of the views or of one `teacher/tap` output."""
    return os.path.join(folder, f"{name.replace('/', '__')}.npy")


def _load(folder: str, name: str) -> np.ndarray:
    return np.load(_path(folder, name), mmap_mode="r")


class TeacherCache:
    """Views of a training split and the teachers' outputs on them.

    Build with `TeacherCache.build(...)`; feed `dataset(batch_size, seed)` to `Distiller.fit`.
    Attributes: `views` uint8 [V, N, S, S, 3], `outputs` {f"{teacher}/{tap}": float16 [V, N, ...]},
    `labels` int32 [N].
    """

    def __init__(self, views, outputs: dict, labels, num_teachers: int, taps: Sequence[str], folder=None):
        self.views, self.outputs, self.labels = views, outputs, np.asarray(labels, np.int32)
        self.num_teachers, self.taps, self.folder = num_teachers, list(taps), folder

    def close(self) -> None:
        """Drops the arrays (hundreds of MiB): `tf.data` keeps the functions of a finished
        dataset, and with them this cache, alive until the process ends."""
        self.views, self.outputs = np.zeros((0, 0, 1, 1, 3), np.uint8), {}

    @property
    def num_views(self) -> int:
        return self.views.shape[0]

    @property
    def nbytes(self) -> int:
        return int(self.views.nbytes + sum(a.nbytes for a in self.outputs.values()))

    @classmethod
    def build(
        cls,
        split: Split,
        teacher_graphs: List[keras.Model],
        image_size: int,
        num_views: int = 4,
        seed: int = 0,
        crop_border: bool = False,
        mode: str = "auto",
        folder: Optional[str] = None,
        batch_size: int = 32,
        views_folder: Optional[str] = None,
    ) -> "TeacherCache":
        """Renders the views and runs each teacher's tap model once per view.

        `teacher_graphs` are the Distiller's teacher tap models (`{tap: tensor}` outputs); none:
        the views alone (the student-alone arm's input stream, or live teachers on the views).
        `mode="disk"` (or `auto` over AUTO_MEMORY_LIMIT_BYTES) memory-maps the teachers' outputs
        under `folder` and the views under `views_folder` (default: `folder`). The views depend on
        the data, the preprocessing, the seed and the view count, not on the teachers: given their
        own folder, every cache of the same views shares them, so the student-alone arm of a study
        reads the views its distilled arms rendered instead of rendering them again, and a cache
        of new teachers only runs the teachers.
        """
        if mode not in CACHE_MODES or mode == "off":
            raise ValueError(f"Cache mode must be one of auto, memory, disk; got {mode!r}.")
        taps = list(teacher_graphs[0].output) if teacher_graphs else []
        n = len(split)
        shapes = {f"{t}/{tap}": tuple(g.output[tap].shape[1:]) for t, g in enumerate(teacher_graphs) for tap in taps}
        nbytes = num_views * n * (image_size * image_size * 3 + 2 * sum(int(np.prod(s)) for s in shapes.values()))
        on_disk = mode == "disk" or (mode == "auto" and nbytes > AUTO_MEMORY_LIMIT_BYTES)
        views_shape = (num_views, n, image_size, image_size, 3)
        rendered = None  # the stored views, when a cache of the same views rendered them already
        if on_disk:
            if folder is None:
                raise ValueError("A disk cache needs a folder.")
            views_folder = views_folder or folder
            if _complete(views_folder, VIEWS_DONE, views_shape):
                if not teacher_graphs or _complete(folder, OUTPUTS_DONE, views_shape):
                    return cls._open(folder, views_folder, split.labels, len(teacher_graphs), taps)
                rendered = _load(views_folder, "views")
            else:  # never built, or interrupted: start over
                shutil.rmtree(views_folder, ignore_errors=True)
            if folder != views_folder:
                shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, exist_ok=True)
            os.makedirs(views_folder, exist_ok=True)

        def array(name, shape, dtype, where):
            if on_disk:
                return np.lib.format.open_memmap(_path(where, name), mode="w+", dtype=dtype, shape=shape)
            return np.empty(shape, dtype)

        views = rendered if rendered is not None else array("views", views_shape, np.uint8, views_folder)
        outputs = {k: array(k, (num_views, n, *s), np.float16, folder) for k, s in shapes.items()}
        plain = image_dataset(split, image_size, crop_border).enumerate()

        def render(v):  # view v of image i: augment_image with the seed (seed * 1000 + v, i)
            def view(i, image):
                pixels = augment_image(tf.cast(image, tf.float32), tf.stack([seed * 1000 + v, i]))
                return tf.cast(tf.round(pixels), tf.uint8)

            return plain.map(view, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(batch_size)

        # Compiled forward passes: eager calls of a functional model cost several times more.
        forwards = [tf.function(lambda x, g=graph: g(x, training=False)) for graph in teacher_graphs]
        what = ("running the teachers on the stored views" if rendered is not None else
                "rendering the views and the teachers' outputs" if teacher_graphs else "rendering the views")
        bar = progress(num_views * n, what)
        for v in range(num_views):
            if rendered is None:
                images = iter(render(v))
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                if rendered is None:
                    views[v, start:stop] = next(images).numpy()
                pixels = tf.constant(views[v, start:stop], tf.float32)  # exactly the stored uint8 view
                for t, forward in enumerate(forwards):
                    for tap, value in forward(pixels).items():
                        outputs[f"{t}/{tap}"][v, start:stop] = keras.ops.convert_to_numpy(value)
                bar.update(stop - start)
        bar.close()
        cache = cls(views, outputs, split.labels, len(teacher_graphs), taps, folder if on_disk else None)
        if on_disk:
            for a in outputs.values():
                a.flush()
            if rendered is None:
                views.flush()
                _mark(views_folder, VIEWS_DONE, views_shape)
            _mark(folder, OUTPUTS_DONE, views_shape, taps=taps, teachers=len(teacher_graphs))
        return cache

    @classmethod
    def _open(cls, folder, views_folder, labels, num_teachers, taps):
        outputs = {f"{t}/{tap}": _load(folder, f"{t}/{tap}") for t in range(num_teachers) for tap in taps}
        return cls(_load(views_folder, "views"), outputs, labels, num_teachers, taps, folder)

    def stream(self, seed: int = 0) -> tf.data.Dataset:
        """(image index, view index) pairs of one epoch, reshuffled and redrawn each epoch.

        A function of `seed`, the image count and the view count only: two caches of the same
        views (with or without teacher outputs) give the same stream.
        """
        n, num_views = len(self.labels), self.num_views
        order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
        views = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True)
        return tf.data.Dataset.zip(order, views.map(lambda r: tf.math.floormod(r, num_views)))

    def stream_fingerprint(self, seed: int = 0, epochs: int = 2) -> str:
        """sha256 of the views' pixels and of the first `epochs` epochs' (image, view) order."""
        h = hashlib.sha256(np.ascontiguousarray(self.views).tobytes())
        stream = self.stream(seed)
        for _ in range(epochs):
            for i, v in stream.batch(4096):
                h.update(i.numpy().tobytes())
                h.update(v.numpy().tobytes())
        return h.hexdigest()

    def dataset(self, batch_size: int, seed: int = 0, taps: Optional[Sequence[str]] = None) -> tf.data.Dataset:
        """Batches of ({"image", "teachers"}, labels): one random view per image, reshuffled per epoch.

        `taps` selects the teacher outputs the batches carry (default: all cached), so one cache of
        every tap can serve runs whose losses read different ones. A cache of views alone gives
        (image, labels) batches.
        """
        keys = [k for k in self.outputs if taps is None or k.split("/", 1)[1] in taps]

        def gather(indices, view_ids):
            values = [self.views[view_ids, indices]]
            values += [np.asarray(self.outputs[k][view_ids, indices], np.float32) for k in keys]
            return values + [self.labels[indices]]

        def load(indices, view_ids):
            values = tf.numpy_function(gather, [indices, view_ids], [tf.uint8] + [tf.float32] * len(keys) + [tf.int32])
            image = tf.cast(values[0], tf.float32)
            image.set_shape((None, *self.views.shape[2:]))
            labels = values[-1]
            labels.set_shape((None,))
            if not keys:
                return image, labels
            teachers = [{} for _ in range(self.num_teachers)]
            for k, value in zip(keys, values[1:-1]):
                t, tap = k.split("/", 1)
                value.set_shape((None, *self.outputs[k].shape[2:]))
                teachers[int(t)][tap] = value
            return {IMAGE_KEY: image, TEACHERS_KEY: tuple(teachers)}, labels

        ds = self.stream(seed).batch(batch_size)
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
