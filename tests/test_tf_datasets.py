"""The one preprocessing, the tf.data pipeline, and augmentation."""

import io

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_endokd.data.augment import RandomTranspose, build_augmenter
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


def test_random_transpose_is_per_image_and_label_preserving_geometry():
    x = tf.reshape(tf.range(2 * 4 * 4 * 1, dtype=tf.float32), (2, 4, 4, 1))
    x = tf.tile(x[:1], (200, 1, 1, 1))
    out = RandomTranspose(seed=3)(x, training=True).numpy()
    transposed = np.all(out == np.transpose(x.numpy(), (0, 2, 1, 3)), axis=(1, 2, 3))
    same = np.all(out == x.numpy(), axis=(1, 2, 3))
    assert np.all(transposed | same) and 0.3 < transposed.mean() < 0.7
    assert np.array_equal(RandomTranspose()(x, training=False).numpy(), x.numpy())


def test_augmenter_keeps_colour_cues_mild():
    blue = tf.constant(np.tile(np.array([40, 60, 200], np.float32), (8, 16, 16, 1)))
    out = build_augmenter(0)(blue, training=True).numpy()
    assert np.all(out[..., 2] > out[..., 0] + 80)  # a dyed (blue) region stays blue
