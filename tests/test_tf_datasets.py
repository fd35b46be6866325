"""The one preprocessing, the tf.data pipeline, and augmentation."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_endokd.data.augment import augment_image
from keras_endokd.data.tf_datasets import crop_black_border, decode_image, make_dataset, preprocess_image
from keras_endokd.data.source import Split


def _encode(array, fmt):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def _bordered_frame(h=576, w=720):
    """A real-size frame: bright field of view in a black surround with white overlay text."""
    frame = np.zeros((h, w, 3), np.uint8)
    frame[40:h - 30, 150:w - 60] = (200, 90, 80)
    frame[10:20, 10:60] = 255  # overlay text on the black border
    return frame


def test_preprocess_any_size_to_uint8_square():
    for h, w in ((576, 720), (1072, 1920), (31, 17)):
        out = preprocess_image(np.full((h, w, 3), 128, np.uint8), 64)
        assert out.dtype == tf.uint8 and tuple(out.shape) == (64, 64, 3)
        assert int(tf.reduce_min(out)) == int(tf.reduce_max(out)) == 128


def test_crop_black_border_finds_the_field_of_view():
    cropped = crop_black_border(_bordered_frame())
    assert tuple(cropped.shape) == (576 - 70, 720 - 210, 3)
    dark = np.zeros((50, 60, 3), np.uint8)
    assert tuple(crop_black_border(dark).shape) == (50, 60, 3)  # nothing bright: unchanged


def test_decode_jpeg_png_grayscale_rgba_and_16_bit():
    rgb = _bordered_frame(48, 64)
    assert tuple(decode_image(_encode(rgb, "PNG")).shape) == (48, 64, 3)
    np.testing.assert_array_equal(decode_image(_encode(rgb, "PNG")).numpy(), rgb)
    assert tuple(decode_image(_encode(rgb, "JPEG")).shape) == (48, 64, 3)
    assert tuple(decode_image(_encode(rgb[..., 0], "PNG")).shape) == (48, 64, 3)
    rgba = np.concatenate([rgb, np.full((48, 64, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(decode_image(_encode(rgba, "PNG")).numpy(), rgb)
    sixteen = (rgb[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    Image.fromarray(sixteen).save(buf, format="PNG")
    np.testing.assert_array_equal(decode_image(buf.getvalue()).numpy()[..., 0], rgb[..., 0])


def test_make_dataset_from_files_keeps_order_for_evaluation(tmp_path):
    paths, labels = [], []
    for i, size in enumerate([(40, 50), (576, 720), (64, 64)]):
        path = tmp_path / f"{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(np.full((*size, 3), 40 * (i + 1), np.uint8)).save(path)
        paths.append(str(path))
        labels.append(i)
    ds = make_dataset(Split(labels, paths=paths), 32, batch_size=2, training=False)
    images, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    images, ys = np.concatenate(images), np.concatenate(ys)
    assert images.dtype == np.float32 and images.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(ys, [0, 1, 2])
    np.testing.assert_allclose(images.mean(axis=(1, 2, 3)), [40, 80, 120], atol=2)


def test_training_pipeline_shuffles_and_augments_in_memory_images():
    rng = np.random.default_rng(0)
    split = Split(np.arange(64) % 4, images=rng.integers(0, 255, (64, 16, 16, 3), dtype=np.uint8))
    ds = make_dataset(split, 16, batch_size=64, training=True, seed=1)
    x, y = next(iter(ds))
    assert x.shape == (64, 16, 16, 3) and sorted(y.numpy().tolist()) == sorted(split.labels.tolist())
    assert not np.array_equal(y.numpy(), split.labels)  # shuffled
    assert float(tf.reduce_min(x)) >= 0 and float(tf.reduce_max(x)) <= 255


def test_geometry_is_the_eight_rotations_and_mirrors_each_drawn_per_image():
    """Colour jitter aside (a constant image has no geometry), the output of an asymmetric image is
    one of its eight rotations/mirrors, and over many seeds all eight appear, none dominating."""
    base = np.zeros((4, 4, 3), np.float32)
    base[0, 1] = base[0, 2] = base[1, 3] = 255.0  # no symmetry: eight distinct orientations
    group = [np.rot90(m, r) for m in (base, base[:, ::-1]) for r in range(4)]
    counts = np.zeros(8, int)
    for s in range(400):
        out = augment_image(tf.constant(base), tf.constant([s, 7])).numpy()
        bright = out.mean(-1) > out.mean()
        hits = [g_i for g_i, g in enumerate(group) if np.array_equal(bright, g.mean(-1) > 0)]
        assert len(hits) == 1, s
        counts[hits[0]] += 1
    assert counts.min() > 25 and counts.max() < 80, counts


def test_augmentation_is_a_function_of_image_and_seed_only():
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.float32))
    a = augment_image(image, tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(a, augment_image(image, tf.constant([3, 4])).numpy())
    assert not np.array_equal(a, augment_image(image, tf.constant([3, 5])).numpy())
    assert a.min() >= 0 and a.max() <= 255


def test_fresh_training_stream_is_identical_between_pipelines_and_new_each_epoch():
    """The fresh stream's draws do not depend on the parallel map's scheduling: two pipelines of
    the same seed give the same batches, bit for bit, and the second epoch differs from the first."""
    rng = np.random.default_rng(0)
    split = Split(np.arange(96) % 4, images=rng.integers(0, 255, (96, 16, 16, 3), dtype=np.uint8))

    def two_epochs(seed):
        ds = make_dataset(split, 16, batch_size=8, training=True, seed=seed)
        return [np.concatenate([x.numpy() for x, _ in ds]) for _ in range(2)]

    first, second = two_epochs(5), two_epochs(5)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], two_epochs(6)[0])


def test_augmentation_keeps_colour_cues_mild():
    blue = tf.constant(np.tile(np.array([40, 60, 200], np.float32), (16, 16, 1)))
    for s in range(20):
        out = augment_image(blue, tf.constant([s, 0])).numpy()
        assert np.all(out[..., 2] > out[..., 0] + 80), s  # a dyed (blue) region stays blue
