"""The embedded synthetic dataset: determinism, API contracts and that each class shows its cue."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from keras_endokd.data import synthetic
from keras_endokd.data.synthetic import CLASS_NAMES, Difficulty, generate, load

pytestmark = pytest.mark.xdist_group("test_synthetic")  # its module fixtures are built once, on one worker

LABELS = np.array([3, 0, 7, 2, 2, 5, 1, 4, 6, 6, 0, 5], dtype=np.int32)


def _centre_and_ring(size):
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(xx - size / 2 + 0.5, yy - size / 2 + 0.5) / size
    return r < 0.12, (r > 0.22) & (r < 0.36)


@pytest.fixture(scope="module")
def per_class_64():
    """24 images per class at 64 px, grouped by class."""
    labels = np.repeat(np.arange(len(CLASS_NAMES)), 24)
    return labels, generate(labels, 64, seed=1, split="cues").astype(np.float32)


def test_same_seed_gives_identical_pixels():
    a = generate(LABELS, 48, seed=3, split="val")
    b = generate(LABELS, 48, seed=3, split="val")
    assert a.dtype == np.uint8 and a.shape == (len(LABELS), 48, 48, 3)
    np.testing.assert_array_equal(a, b)


def test_seed_split_and_index_change_the_pixels():
    base = generate(LABELS, 32, seed=3)
    assert not np.array_equal(base, generate(LABELS, 32, seed=4))
    assert not np.array_equal(base, generate(LABELS, 32, seed=3, split="test"))
    assert not np.array_equal(base, generate(LABELS, 32, seed=3, start_index=1))
    # Every image differs from every other one.
    flat = base.reshape(len(base), -1)
    assert len({row.tobytes() for row in flat}) == len(base)


def test_chunked_generation_equals_one_shot():
    # 33 px: an odd size, so no row or plane lines up with a SIMD width.
    whole = generate(LABELS, 33, seed=9, split="train")
    parts = [generate(LABELS[s:e], 33, seed=9, split="train", start_index=s)
             for s, e in ((0, 5), (5, 6), (6, 12))]
    np.testing.assert_array_equal(whole, np.concatenate(parts))


def test_image_depends_only_on_its_own_index_and_label():
    batch = generate(LABELS, 40, seed=2)
    alone = generate(LABELS[7:8], 40, seed=2, start_index=7)
    np.testing.assert_array_equal(batch[7], alone[0])
    relabelled = LABELS.copy()
    relabelled[0] = (relabelled[0] + 1) % len(CLASS_NAMES)
    other = generate(relabelled, 40, seed=2)
    assert not np.array_equal(other[0], batch[0])
    np.testing.assert_array_equal(other[1:], batch[1:])


@pytest.mark.parametrize("size", [32, 200])
def test_any_size(size):
    images = generate(np.arange(8), size, seed=0)
    assert images.shape == (8, size, size, 3) and images.dtype == np.uint8
    # Not blank: mucosa and black borders give a wide range in every image.
    assert (images.reshape(8, -1).max(1) - images.reshape(8, -1).min(1) > 100).all()


def test_load_gives_balanced_in_memory_splits():
    source = load(image_size=32, seed=5, split_sizes={"train": 3, "val": 1, "test": 2})
    assert source.name == "synthetic" and source.root is None
    assert source.class_names == CLASS_NAMES
    for name, per_class in {"train": 3, "val": 1, "test": 2}.items():
        split = source.splits[name]
        assert split.paths is None
        assert split.images.shape == (8 * per_class, 32, 32, 3)
        assert split.images.dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(split.labels, minlength=8), per_class)
    assert not np.array_equal(source.splits["train"].images[:8], source.splits["test"].images[:8])
    again = load(image_size=32, seed=5, split_sizes={"val": 1})
    np.testing.assert_array_equal(again.splits["val"].images, source.splits["val"].images)


def test_load_draws_the_same_arguments_once_and_hands_out_read_only_pixels(monkeypatch):
    sizes = {"train": 2, "val": 1, "test": 1}
    first = load(image_size=32, seed=11, split_sizes=sizes)
    drawn = []
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: drawn.append(a) or generate(*a, **k))
    again = load(image_size=32, seed=11, split_sizes=dict(sizes))
    assert drawn == [] and again is not first and again.splits is not first.splits
    assert again.splits["train"].images is first.splits["train"].images
    with pytest.raises(ValueError, match="read-only"):
        again.splits["train"].images[0, 0, 0] = 0
    np.testing.assert_array_equal(again.splits["test"].images, generate(again.splits["test"].labels, 32, 11, "test"))
    other = load(image_size=32, seed=12, split_sizes=sizes)  # other arguments: drawn again
    assert len(drawn) == 3 and not np.array_equal(other.splits["train"].images, first.splits["train"].images)


def test_default_split_sizes():
    assert synthetic.DEFAULT_SPLIT_SIZES == {"train": 160, "val": 40, "test": 100}


def _no_rendering(*args, **kwargs):
    raise AssertionError("describe rendered images")


def test_describe_counts_without_rendering(monkeypatch):
    real = load(image_size=8).describe()  # the default split sizes, rendered at a tiny size
    monkeypatch.setattr(synthetic.rendering, "_render", _no_rendering)
    with pytest.raises(AssertionError, match="rendered"):  # the patch does stop rendering
        load(image_size=8, split_sizes={"val": 1})
    summary = synthetic.describe(image_size=256, seed=3)
    assert summary == real
    assert {k: v["total"] for k, v in summary["splits"].items()} == {"train": 1280, "val": 320, "test": 800}
    small = {"train": 2, "val": 0}
    assert synthetic.describe(split_sizes=small)["splits"]["train"]["per_class"]["polyps"] == 2
    with pytest.raises(ValueError, match="image_size"):
        synthetic.describe(image_size=4)
    with pytest.raises(ValueError, match="split_sizes"):
        synthetic.describe(split_sizes={"training": 2})


_DESCRIBE_WITHOUT_RENDERING = """
import runpy, sys
from keras_endokd.data.synthetic import rendering
def no_rendering(*args, **kwargs):
    raise AssertionError("describe rendered images")
rendering._render = no_rendering
sys.argv = ["keras_endokd.data", "describe", "--dataset=synthetic"]
runpy.run_module("keras_endokd.data", run_name="__main__", alter_sys=True)
"""


def test_the_describe_command_renders_nothing_and_counts_what_load_gives():
    result = subprocess.run([sys.executable, "-c", _DESCRIBE_WITHOUT_RENDERING], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    source = load(image_size=8)
    assert {name: s["total"] for name, s in printed["splits"].items()} == {
        name: len(split) for name, split in source.splits.items()
    }
    assert printed == source.describe()


def test_write_folder_writes_the_kvasir_layout(tmp_path):
    root = synthetic.write_folder(str(tmp_path), per_class=2, image_size=40, seed=0)
    assert root == os.path.join(str(tmp_path), "kvasir-dataset-v2")
    assert sorted(os.listdir(root)) == sorted(CLASS_NAMES)
    for name in CLASS_NAMES:
        files = sorted(os.listdir(os.path.join(root, name)))
        assert files == [f"{name}-00000.jpg", f"{name}-00001.jpg"]  # no temporary files left
        with Image.open(os.path.join(root, name, files[0])) as image:
            assert image.format == "JPEG" and image.size == (40, 40) and image.mode == "RGB"


def test_sample_grid_writes_a_labelled_png(tmp_path):
    path = synthetic.sample_grid(str(tmp_path / "grid.png"), per_class=3, image_size=32)
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert height >= 8 * 32 and width >= 3 * 32 + 100  # a label column left of the images
        pixels = np.asarray(image.convert("RGB"))
    assert pixels[:, :100].max() > 200  # the class names are drawn


def test_dyed_classes_are_bluer_in_the_centre(per_class_64):
    labels, images = per_class_64
    centre, _ = _centre_and_ring(64)
    blue_minus_red = (images[..., 2] - images[..., 0])[:, centre].mean(axis=1)
    dyed = np.isin(labels, [0, 1])
    assert blue_minus_red[dyed].mean() > blue_minus_red[~dyed].mean() + 50
    assert (blue_minus_red[dyed] > 0).mean() > 0.8


def test_pylorus_centre_is_darker_than_its_surroundings(per_class_64):
    labels, images = per_class_64
    centre, ring = _centre_and_ring(64)
    grey = images.mean(axis=-1)[labels == CLASS_NAMES.index("normal-pylorus")]
    assert (grey[:, centre].mean(axis=1) < grey[:, ring].mean(axis=1)).mean() > 0.8


def test_green_position_box_only_in_lower_gi_frames(per_class_64):
    labels, images = per_class_64
    corner = images[:, -19:, :19]  # lower left
    has_box = (corner[..., 1] - np.maximum(corner[..., 0], corner[..., 2])).max(axis=(1, 2)) > 30
    lower = np.isin(labels, synthetic.LOWER_GI)
    assert not has_box[~lower].any()
    assert 0.2 < has_box[lower].mean() < 0.65  # pip_prob = 0.4


def test_difficulty_is_frozen_and_its_knobs_act():
    with pytest.raises(dataclasses.FrozenInstanceError):
        synthetic.DEFAULT_DIFFICULTY.noise_std = 0.0
    labels = np.full(8, CLASS_NAMES.index("esophagitis"))
    clean = Difficulty(noise_std=0.0, blur_prob=0.0, border_prob=0.0, text_prob=0.0,
                       specular_prob=0.0, subtle_fraction=0.0)
    subtle = dataclasses.replace(clean, subtle_fraction=1.0)
    def red_fraction(images, margin):  # pixels whose R stands above G by more than `margin`
        images = images.astype(np.float32)
        return ((images[..., 0] - images[..., 1]) > margin).mean()
    severe = generate(labels, 96, difficulty=clean)
    # Severe erosions draw more red (R well above G) outside the lumen than faint ones do.
    assert red_fraction(severe, 90) > red_fraction(generate(labels, 96, difficulty=subtle), 90)
    # The inflamed band and the fibrin coats are esophagitis's own: the band reddens the frame,
    # the coats turn part of the red streaks pale.
    calm = dataclasses.replace(clean, erythema_range=(0.0, 0.0))
    uncoated = dataclasses.replace(clean, fibrin_range=(0.0, 0.0))
    assert red_fraction(severe, 60) > 1.1 * red_fraction(generate(labels, 96, difficulty=calm), 60)
    coated = severe.astype(int) - generate(labels, 96, difficulty=uncoated)
    changed = np.abs(coated).max(-1) > 10  # the same scenes: only the coats differ
    assert changed.mean() > 0.002 and coated[changed][:, 1].mean() > 15  # paler (greener) than the red
    noisy = dataclasses.replace(clean, noise_std=0.1)
    a, b = generate(labels[:2], 48, difficulty=clean), generate(labels[:2], 48, difficulty=noisy)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 3


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="blur_prob"):
        Difficulty(blur_prob=1.5)
    with pytest.raises(ValueError, match="erosion_width_range"):
        Difficulty(erosion_width_range=(0.02, 0.01))
    with pytest.raises(ValueError, match="fibrin_width"):
        Difficulty(fibrin_width=0.0)
    with pytest.raises(ValueError, match="labels"):
        generate(np.array([0, 8]), 32)
    with pytest.raises(ValueError, match="image_size"):
        generate(np.array([0]), 4)
    with pytest.raises(ValueError, match="seed"):
        generate(np.array([0]), 32, seed=-1)
    with pytest.raises(ValueError, match="split_sizes"):
        load(image_size=32, split_sizes={"training": 2})
    assert generate(np.array([], dtype=np.int64), 32).shape == (0, 32, 32, 3)
