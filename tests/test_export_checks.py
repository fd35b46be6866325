"""The agreement rule of the export checks: the Wilson interval, the pass/fail rule and the
threshold a failed export suggests, and the images agreement is measured on.

The end-to-end checks of a real export are in test_export.py.
"""

import numpy as np
import pytest

from keras_endokd.data.source import Split


def _split(n, seed):
    """n distinct tiny random images (8x8): each one findable again in the pool."""
    rng = np.random.default_rng(seed)
    return Split(np.arange(n) % 4, images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8))


def test_wilson_interval_known_values():
    from keras_endokd.deploy.export_checks import wilson_interval

    assert wilson_interval(0, 10) == (0.0, pytest.approx(3.8415 / 13.8415, abs=1e-4))  # z^2/(n+z^2)
    assert wilson_interval(10, 10) == (pytest.approx(10 / 13.8415, abs=1e-4), 1.0)
    lower, upper = wilson_interval(45, 46)
    assert lower == pytest.approx(0.886647, abs=1e-6) and upper == pytest.approx(0.996152, abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_few_images_fail_only_when_the_upper_bound_is_below_the_threshold():
    from keras_endokd.deploy.export_checks import (agreement_fails, passing_min_agreement,
                                                   wilson_interval)

    assert not agreement_fails(45, 46, 0.99)  # one disagreement among 46 images: 97.8%, passes
    assert agreement_fails(44, 46, 0.99)  # two: upper bound 98.8%
    assert not agreement_fails(1008, 1024, 0.99) and agreement_fails(1007, 1024, 0.99)
    assert agreement_fails(46, 46, 1.01) and not agreement_fails(46, 46, 1.0)
    # the suggested threshold passes every model it was computed from
    uppers = [wilson_interval(44, 46)[1], wilson_interval(1000, 1024)[1]]
    threshold = passing_min_agreement(uppers)
    assert threshold == 0.98 and not agreement_fails(44, 46, threshold)
    assert not agreement_fails(1000, 1024, threshold)
    assert passing_min_agreement([0.57]) == 0.57 and passing_min_agreement([1.0]) == 1.0


def test_agreement_images_are_drawn_from_every_split_deterministically():
    from keras_endokd.deploy.export_images import agreement_images

    splits = {"train": _split(600, 1), "val": _split(100, 2), "test": _split(300, 3)}
    images, drawn = agreement_images(splits, count=1024)
    assert len(images) == 1000 and drawn == {"train": 600, "val": 100, "test": 300}  # all of them
    images, drawn = agreement_images(splits, count=256, seed=4)
    again, drawn_again = agreement_images(splits, count=256, seed=4)
    np.testing.assert_array_equal(images, again)
    assert drawn == drawn_again and sum(drawn.values()) == 256 and min(drawn.values()) > 0
    pool = np.concatenate([splits[k].images for k in ("train", "val", "test")])
    rows = [int(np.flatnonzero((pool == image).all(axis=(1, 2, 3)))[0]) for image in images]
    assert rows == sorted(set(rows))  # without replacement, in split order
