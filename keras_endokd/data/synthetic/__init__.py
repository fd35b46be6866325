"""The embedded synthetic dataset: a procedural Kvasir-v2 look-alike, so nothing is downloaded.

Frames of the eight Kvasir-v2 classes are drawn from a seed at any size, uint8 RGB
[N, S, S, 3], one frame per (seed, split, index, label): the same seed gives the same pixels on
any machine, whether a split is drawn whole or in pieces. Each class carries the cue an
endoscopist would name, on shared, varied mucosa, seen through an endoscope with the artefacts
of real frames; two pairs of classes are confusable by design. docs/datasets.md describes what
is drawn, docs/results.md what the package reaches on it.

The modules, bottom up:

- `drawing`: vectorised numpy primitives (fields, shapes, shading, smooth textures);
- `streams`: the per-image random generators and the order their numbers are drawn in;
- `difficulty`: `Difficulty`, every knob of how hard the data is;
- `scene`: the pixel grid, light and textures a painter gets, and the mucosa and dye;
- `class_painters`: one painter per class;
- `optics`: the endoscope (lighting, colour, defocus, noise, field stop, video overlays);
- `rendering`: `generate`, labels to frames;
- here: the dataset API, `load`, `describe`, `write_folder`, `sample_grid`.

A change to what any of them draws, or in which order, changes the default data, and with it
the key of the teachers shipped in keras_endokd/models/pretrained
(`python -m experiments.build_teachers` rebuilds them).
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from keras_endokd.atomic_files import atomic_path
from keras_endokd.data.kvasir import CLASS_NAMES  # the synthetic data imitates Kvasir-v2
from keras_endokd.data.source import SPLIT_NAMES, DatasetSource, Split
from keras_endokd.data.synthetic.class_painters import LOWER_GI
from keras_endokd.data.synthetic.difficulty import DEFAULT_DIFFICULTY, Difficulty
from keras_endokd.data.synthetic.rendering import check_size_and_seed, generate

DEFAULT_SPLIT_SIZES = {"train": 160, "val": 40, "test": 100}  # images per class


def _balanced_labels(per_class: int) -> np.ndarray:
    """0, 1, ..., 7, 0, 1, ...: balanced at every prefix of 8."""
    return np.tile(np.arange(len(CLASS_NAMES), dtype=np.int32), int(per_class))


def split_labels(split_sizes: Optional[dict] = None) -> Dict[str, np.ndarray]:
    """Split name -> int32 labels [8 * per_class], as `load` draws them; `split_sizes` maps split
    names to images per class (DEFAULT_SPLIT_SIZES if None). ValueError naming a bad entry."""
    sizes = dict(DEFAULT_SPLIT_SIZES if split_sizes is None else split_sizes)
    unknown = set(sizes) - set(SPLIT_NAMES)
    if unknown:
        raise ValueError(f"split_sizes keys must be among {SPLIT_NAMES}, got {sorted(unknown)}.")
    labels = {}
    for name, per_class in sizes.items():
        if int(per_class) != per_class or per_class < 0:
            raise ValueError(f"split_sizes[{name!r}] must be an integer >= 0, got {per_class!r}.")
        labels[name] = _balanced_labels(per_class)
    return labels


def load(
    image_size: int = 128,
    seed: int = 0,
    split_sizes: Optional[dict] = None,
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
) -> DatasetSource:
    """The embedded dataset as in-memory splits; `split_sizes` counts images per class.

    The splits drawn last are kept, read-only, and returned again for the same arguments: a
    process that runs many jobs on one dataset (kd_study's workers, the tests) draws it once
    instead of once per job.
    """
    labels = split_labels(split_sizes)
    key = (image_size, seed, tuple((name, len(y)) for name, y in labels.items()), difficulty)
    if key not in _LAST_DRAWN:
        splits = {name: Split(y, images=generate(y, image_size, seed, name, difficulty))
                  for name, y in labels.items()}
        for split in splits.values():
            split.labels.flags.writeable = split.images.flags.writeable = False
        _LAST_DRAWN.clear()  # one dataset kept: 118 MB at the default size
        _LAST_DRAWN[key] = splits
    return DatasetSource(name="synthetic", class_names=CLASS_NAMES, splits=dict(_LAST_DRAWN[key]), root=None)


_LAST_DRAWN: Dict[tuple, Dict[str, Split]] = {}


def describe(image_size: int = 128, seed: int = 0, split_sizes: Optional[dict] = None) -> dict:
    """`load(image_size, seed, split_sizes).describe()` without rendering an image.

    The splits' labels follow from `split_sizes` alone, so the counts need no pixels: the splits
    summarised hold zero-sized images. The arguments are checked as `load` checks them.
    """
    labels = split_labels(split_sizes)
    check_size_and_seed(image_size, seed)
    no_pixels = {name: Split(y, images=np.empty((len(y), 0, 0, 3), np.uint8))
                 for name, y in labels.items()}
    source = DatasetSource(name="synthetic", class_names=CLASS_NAMES, splits=no_pixels, root=None)
    return source.describe()


def _save_atomic(image, path: str, fmt: str, **kwargs) -> None:
    with atomic_path(path, suffix=os.path.splitext(path)[1]) as tmp:
        image.save(tmp, format=fmt, **kwargs)


def write_folder(
    out_dir: str,
    per_class: int = 100,
    image_size: int = 256,
    seed: int = 0,
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
) -> str:
    """Write JPEGs (quality 95) in the Kvasir-v2 layout, so the file-based loaders can be tested
    on them: out_dir/kvasir-dataset-v2/<class>/<class>-<index:05d>.jpg. Returns that folder."""
    from PIL import Image

    root = os.path.join(out_dir, "kvasir-dataset-v2")
    for name in CLASS_NAMES:
        os.makedirs(os.path.join(root, name), exist_ok=True)
    labels = _balanced_labels(per_class)
    chunk = 64
    for s in range(0, len(labels), chunk):
        images = generate(labels[s : s + chunk], image_size, seed, "folder", difficulty, s)
        for i, image in enumerate(images, start=s):
            name = CLASS_NAMES[labels[i]]
            path = os.path.join(root, name, f"{name}-{i // len(CLASS_NAMES):05d}.jpg")
            _save_atomic(Image.fromarray(image), path, "JPEG", quality=95)
    return root


def sample_grid(
    path: str,
    per_class: int = 6,
    image_size: int = 128,
    seed: int = 0,
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
) -> str:
    """A PNG with one row per class, labelled on the left: the first training images of each
    class (those `load` returns first). Returns `path`."""
    from PIL import Image, ImageDraw

    labels = _balanced_labels(per_class)
    images = generate(labels, image_size, seed, "train", difficulty)
    label_w, gap, k = 160, 2, len(CLASS_NAMES)
    canvas = Image.new(
        "RGB", (label_w + per_class * (image_size + gap), k * (image_size + gap)), (24, 24, 24)
    )
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(CLASS_NAMES):
        top = c * (image_size + gap)
        draw.text((6, top + image_size // 2 - 6), f"{c} {name}", fill=(235, 235, 235))
        for j in range(per_class):
            tile = Image.fromarray(images[j * k + c])
            canvas.paste(tile, (label_w + j * (image_size + gap), top))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _save_atomic(canvas, path, "PNG")
    return path


__all__ = [
    "CLASS_NAMES", "DEFAULT_DIFFICULTY", "DEFAULT_SPLIT_SIZES", "Difficulty", "LOWER_GI",
    "describe", "generate", "load", "sample_grid", "split_labels", "write_folder",
]
