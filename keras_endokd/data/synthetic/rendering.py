"""From labels to uint8 frames: the synthetic generator's one entry point, `generate`.

Image i depends only on (seed, split, start_index + i, labels[i]) (see `streams`): a split
regenerates identically whether drawn whole or in pieces. Images are rendered by class, in chunks
of about CHUNK_PIXELS pixels, so that each numpy call serves many images while the float32
working set stays small: per chunk, the random numbers (`streams.randomness`), the endoscope's
parameters (`optics.camera_params`), the class's scene (`class_painters.PAINTERS`), the camera
(`optics.camera`), then quantisation to uint8 (truncating, after a +0.5 offset: rounding).

The pixels must not depend on the machine: BLAS runs on one thread while rendering, and every
array stays float32.
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np

from keras_endokd.data.kvasir import CLASS_NAMES  # the synthetic data imitates Kvasir-v2
from keras_endokd.data.synthetic import drawing as draw
from keras_endokd.data.synthetic import optics
from keras_endokd.data.synthetic.class_painters import LOWER_GI, PAINTERS
from keras_endokd.data.synthetic.difficulty import DEFAULT_DIFFICULTY, Difficulty
from keras_endokd.data.synthetic.scene import Scene
from keras_endokd.data.synthetic.streams import N_COMMON, Stream, randomness

F32 = np.float32
CHUNK_PIXELS = 2**18  # images rendered together: keeps the float32 working set small
_LOWER_GI_MASK = np.isin(np.arange(len(CLASS_NAMES)), LOWER_GI)


def _render(label: int, indices, size, seed, split, difficulty) -> np.ndarray:
    """uint8 [m, S, S, 3] images of one class: scene, then camera, then quantisation.

    Batching by class gives each painter all the images of its class in the chunk at once, so
    numpy's per-call overhead is shared by many images.
    """
    labels = np.full(len(indices), label)
    rnd = randomness(labels, indices, seed, split)
    x, y = draw.grid(size)  # [1, S] and [S, 1]
    cam = optics.camera_params(Stream(rnd.u[:, :N_COMMON]), difficulty)
    st = Stream(rnd.u[:, N_COMMON:])
    img = PAINTERS[label](Scene(x, y, cam.light, st, rnd.noise, difficulty))
    assert img.dtype == F32, f"{CLASS_NAMES[label]} painted {img.dtype}: float64 halves the speed"
    img = optics.camera(img, cam, rnd.text, _LOWER_GI_MASK[labels], x, y)  # 0..255
    np.clip(img, 0.0, 255.0, out=img)
    out = np.empty((len(labels), size, size, 3), np.uint8)
    for k in range(3):  # per-plane copies (truncating casts): one channels-last transpose is slower
        out[..., k] = img[:, k]
    return out


def generate(
    labels: np.ndarray,
    image_size: int,
    seed: int = 0,
    split: str = "train",
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
    start_index: int = 0,
) -> np.ndarray:
    """uint8 [N, image_size, image_size, 3] RGB; image i depends only on (seed, split,
    start_index + i, labels[i]), so a split regenerates identically, in chunks or in one go."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(
            f"labels must lie in [0, {len(CLASS_NAMES)}), got {labels.min()}..{labels.max()}."
        )
    check_size_and_seed(image_size, seed, start_index)
    size = int(image_size)
    _raise_malloc_threshold()
    out = np.empty((len(labels), size, size, 3), np.uint8)
    chunk = max(1, CHUNK_PIXELS // (size * size))
    with _single_threaded_blas():
        for label in np.unique(labels):
            where = np.flatnonzero(labels == label)
            for s in range(0, len(where), chunk):
                part = where[s : s + chunk]
                indices = int(start_index) + part
                out[part] = _render(int(label), indices, size, int(seed), split, difficulty)
    return out


def check_size_and_seed(image_size, seed, start_index=0) -> None:
    """ValueError unless image_size is an integer >= 8 and seed, start_index integers >= 0."""
    if int(image_size) != image_size or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}.")
    if int(seed) != seed or seed < 0 or int(start_index) != start_index or start_index < 0:
        raise ValueError(
            f"seed and start_index must be integers >= 0, got {seed!r}, {start_index!r}."
        )


def _single_threaded_blas():
    """Run BLAS on one thread while rendering.

    The matrix products here are small and many; a second BLAS thread buys nothing and, when the
    other core is busy, stalls every product (several times slower). One thread also keeps the
    rounding, hence the pixels, the same whatever the machine's thread settings.
    """
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _raise_malloc_threshold() -> None:
    """Allocate and free one 16 MB block, once per process.

    glibc serves blocks above its mmap threshold with fresh pages and returns them on free, so
    every numpy temporary of a few MB is page-faulted in again, a large share of the run time.
    Freeing a block this large raises glibc's dynamic threshold above all our temporaries (as any
    program that frees such a block does); on other allocators it is a no-op.
    """
    block = np.ones(2**22, np.float32)
    del block
