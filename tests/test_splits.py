"""Split helpers: deterministic, stratified, and the Hyper-Kvasir official fold cut."""

import numpy as np
import pytest

from keras_endokd.data import splits

# 3 classes of 10, 7 and 1 samples, interleaved as a listing would not be (stratification must
# not depend on order).
LABELS = np.array([0, 1] * 7 + [0, 0, 0, 2])


def test_stratified_kfold_is_deterministic_and_seeded():
    a = splits.stratified_kfold(LABELS, num_folds=3, seed=0)
    b = splits.stratified_kfold(LABELS, num_folds=3, seed=0)
    c = splits.stratified_kfold(LABELS, num_folds=3, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_stratified_kfold_spreads_each_class_evenly():
    folds = splits.stratified_kfold(LABELS, num_folds=3, seed=0)
    assert set(folds) == {0, 1, 2}
    for c in np.unique(LABELS):
        counts = np.bincount(folds[LABELS == c], minlength=3)
        assert counts.max() - counts.min() <= 1, (c, counts)
    totals = np.bincount(folds, minlength=3)
    assert totals.max() - totals.min() <= 1


def test_consecutive_folds_examples():
    np.testing.assert_array_equal(splits.consecutive_folds(6, 5), [0, 1, 2, 3, 4, 4])
    np.testing.assert_array_equal(splits.consecutive_folds(9, 5), [0, 1, 2, 3, 4, 4, 4, 4, 4])
    np.testing.assert_array_equal(splits.consecutive_folds(7, 2), [0, 0, 0, 1, 1, 1, 1])
    # Fewer files than folds: all in the last fold, as the official script does.
    np.testing.assert_array_equal(splits.consecutive_folds(3, 5), [4, 4, 4])
    assert len(splits.consecutive_folds(0, 2)) == 0


def test_stratified_ratio_split_fractions():
    labels = np.repeat([0, 1], [100, 50])
    parts = splits.stratified_ratio_split(labels, (0.7, 0.1, 0.2), seed=0)
    assert {k: len(v) for k, v in parts.items()} == {"train": 105, "val": 15, "test": 30}
    np.testing.assert_array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(150))
    assert np.bincount(labels[parts["test"]]).tolist() == [20, 10]
    again = splits.stratified_ratio_split(labels, (0.7, 0.1, 0.2), seed=0)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)


def test_ratio_split_keeps_a_training_sample_of_tiny_classes():
    parts = splits.stratified_ratio_split([0, 1, 1], (0.4, 0.3, 0.3))
    assert sorted(np.array([0, 1, 1])[parts["train"]]) == [0, 1]


def test_carve_validation_is_stratified_and_keeps_training_samples():
    labels = np.repeat([0, 1, 2, 3], [50, 2, 1, 20])
    pool = np.arange(len(labels))[::-1]
    train, val = splits.carve_validation(pool, labels, fraction=0.1, seed=0)
    assert np.bincount(labels[val], minlength=4).tolist() == [5, 1, 0, 2]
    assert np.bincount(labels[train], minlength=4).tolist() == [45, 1, 1, 18]
    assert not set(train) & set(val) and set(train) | set(val) == set(pool)
    assert len(splits.carve_validation(pool, labels, fraction=0.0)[1]) == 0


def test_fold_splits_use_fold_k_as_test():
    labels = np.repeat([0, 1], 10)
    folds = splits.stratified_kfold(labels, 2, seed=0)
    parts = splits.fold_splits(folds, labels, fold=1, num_folds=2, val_fraction=0.2)
    np.testing.assert_array_equal(parts["test"], np.flatnonzero(folds == 1))
    assert set(parts["train"]) | set(parts["val"]) == set(np.flatnonzero(folds == 0))
    assert np.bincount(labels[parts["val"]]).tolist() == [1, 1]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: splits.stratified_kfold(LABELS, num_folds=1), "num_folds"),
        (lambda: splits.consecutive_folds(5, 1), "num_folds"),
        (lambda: splits.stratified_ratio_split(LABELS, (0.5, 0.1, 0.1)), "sum to 1"),
        (lambda: splits.stratified_ratio_split(LABELS, (0.9, 0.1)), "3 non-negative"),
        (lambda: splits.carve_validation([0, 1], LABELS, fraction=1.0), "fraction"),
        (lambda: splits.fold_splits([0, 1], [0, 0], fold=2, num_folds=2), "fold must be"),
        (lambda: splits.fold_splits([0, 1], [0, 0], fold=-1, num_folds=2), "fold must be"),
        (lambda: splits.stratified_kfold([[0, 1]]), "1-D"),
        (lambda: splits.stratified_kfold([0, -1]), "non-negative"),
        (lambda: splits.split_indices(LABELS, split="random"), "kfold"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()
