"""Deterministic, stratified train / val / test splits (pure numpy).

Every function takes integer labels in the order of a sorted file listing and returns indices into
that listing, so a split depends only on (listing, seed): it is the same on every machine and
every run. Randomness comes from `numpy.random.default_rng(seed)` (PCG64), whose streams numpy
keeps stable across platforms.

Fold convention (all loaders): `fold=k` makes fold k the TEST split; the other folds are the
training pool, from which a stratified validation split is carved (`val_fraction`, default 10%).
With 2 folds, `fold=1` is "train on fold 0, test on fold 1", as in the Hyper-Kvasir protocol.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from keras_endokd.data.source import SPLIT_NAMES


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}.")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        raise ValueError(f"labels must be non-negative integers, got dtype {labels.dtype}.")
    return labels.astype(np.int64)


def _check_num_folds(num_folds: int) -> None:
    if int(num_folds) != num_folds or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds!r}.")


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}.")


def _concat(parts) -> np.ndarray:
    return np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)


def stratified_kfold(labels, num_folds: int = 2, seed: int = 0) -> np.ndarray:
    """Fold index (0..num_folds-1) per sample, each class spread evenly over the folds (±1).

    Per class (in label order) the members are shuffled and dealt round-robin; the deal continues
    where the previous class stopped, so fold sizes also differ by at most 1 overall (restarting at
    fold 0 for every class would make fold 0 the largest).
    """
    labels = _check_labels(labels)
    _check_num_folds(num_folds)
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), np.int64)
    start = 0
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        folds[members] = (start + np.arange(len(members))) % num_folds
        start = (start + len(members)) % num_folds
    return folds


def consecutive_folds(n: int, num_folds: int) -> np.ndarray:
    """Hyper-Kvasir's official fold cut of one class's n listed files, in listing order.

    The listing is cut into consecutive chunks of `n // num_folds`; the last fold takes the
    remainder (6 files in 5 folds -> [0, 1, 2, 3, 4, 4]; fewer files than folds -> all in the last
    fold). This is `split_data_into_equal_parts` of the dataset's `split_images_into_k_folds.py`.
    """
    _check_num_folds(num_folds)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    chunk = n // num_folds
    folds = np.full(n, num_folds - 1, np.int64)
    head = chunk * (num_folds - 1)
    if chunk:
        folds[:head] = np.arange(head) // chunk
    return folds


def stratified_ratio_split(
    labels, fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> Dict[str, np.ndarray]:
    """Split name (`train`, `val`, `test`) -> sorted indices, each class cut by `fractions`.

    Per class the shuffled members are cut at round(cumulative fraction * n), so the three parts
    always add up to n; every non-empty class keeps at least one training sample.
    """
    labels = _check_labels(labels)
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or fractions[0] == 0:
        raise ValueError(
            "fractions must be 3 non-negative (train, val, test) values with train > 0, "
            f"got {fractions}."
        )
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions):.6g}).")
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(fractions)[:-1]
    parts = {name: [] for name in SPLIT_NAMES}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.floor(cumulative * len(members) + 0.5).astype(np.int64)
        cuts = np.maximum.accumulate(np.maximum(cuts, 1))
        for name, part in zip(SPLIT_NAMES, np.split(members, cuts)):
            parts[name].append(part)
    return {name: _concat(p) for name, p in parts.items()}


def carve_validation(
    indices, labels, fraction: float = 0.1, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Split a training pool into (train, val) indices, stratified.

    Args:
      indices: indices of the pool (into `labels`).
      labels: labels of the whole listing (not only of the pool).
      fraction: share of each class moved to validation, rounded half up.

    A class with >= 2 pool samples gives at least one to validation, so that validation metrics
    (and checkpoint selection) see every class, even Hyper-Kvasir's 6-image ones, and always keeps
    at least one for training; a class with a single sample gives none. `fraction=0` gives an empty
    validation split.
    """
    labels = _check_labels(labels)
    indices = np.asarray(indices, np.int64)
    _check_fraction("fraction", fraction)
    rng = np.random.default_rng(seed)
    pool_labels = labels[indices]
    val = []
    for c in np.unique(pool_labels):
        members = rng.permutation(indices[pool_labels == c])
        n = len(members)
        n_val = 0 if fraction == 0 or n < 2 else min(max(1, int(fraction * n + 0.5)), n - 1)
        val.append(members[:n_val])
    val = _concat(val)
    return np.setdiff1d(indices, val), val


def fold_splits(
    folds, labels, fold: int, num_folds: int, val_fraction: float = 0.1, seed: int = 0
) -> Dict[str, np.ndarray]:
    """Split name -> indices for one fold: fold `fold` is test, validation carved from the rest."""
    folds = np.asarray(folds)
    _check_num_folds(num_folds)
    if int(fold) != fold or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer in [0, {num_folds - 1}], got {fold!r}.")
    train, val = carve_validation(np.flatnonzero(folds != fold), labels, val_fraction, seed)
    return {"train": train, "val": val, "test": np.flatnonzero(folds == fold)}


def split_indices(
    labels,
    split: str = "kfold",
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    fold: int = 0,
    num_folds: int = 2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Dict[str, np.ndarray]:
    """`split="kfold"`: stratified k-fold + `fold_splits`; `split="ratio"`: `fractions` only."""
    if split == "ratio":
        return stratified_ratio_split(labels, fractions, seed)
    if split == "kfold":
        folds = stratified_kfold(labels, num_folds, seed)
        return fold_splits(folds, labels, fold, num_folds, val_fraction, seed)
    raise ValueError(f"split must be 'kfold' or 'ratio', got {split!r}.")
