"""Seeded random train/val/test splits, saved and reloaded as ``.npz`` files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

#: training fraction when nothing sizes the training split and ``num_test`` is the rest
DEFAULT_TRAIN_FRACTION = 0.8


def resolve_size(value: int | float | None, total: int, name: str) -> int | None:
    """An absolute count from an int, a fraction in (0, 1], or None (= "the rest", resolved later)."""
    if value is None:
        return None
    if isinstance(value, float) and 0.0 < value <= 1.0:
        return int(round(value * total))
    if int(value) != value or value < 0:
        raise ValueError(f"{name}={value!r}: give a count of molecules (int >= 0) or a fraction in (0, 1]")
    return int(value)


def random_split(
    total: int,
    num_train: int | float | None,
    num_val: int | float,
    num_test: int | float | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split ``range(total)`` by a seeded random permutation: first ``num_train`` indices are the
    training set, the next ``num_val`` validation, then ``num_test`` test. ``None`` for one of
    ``num_train`` / ``num_test``: all the rest (training comes first in the permutation either way).

    Raises ``ValueError`` (naming the options) when the sizes exceed the dataset or both are ``None``.
    """
    n_train = resolve_size(num_train, total, "num_train")
    n_val = resolve_size(num_val, total, "num_val")
    n_test = resolve_size(num_test, total, "num_test")
    if n_train is None and n_test is None:
        raise ValueError("num_train and num_test cannot both be None (the rest): size one of them")
    if n_train is None:
        n_train = total - n_val - n_test
    if n_test is None:
        n_test = total - n_train - n_val
    if n_train + n_val + n_test > total or n_test < 0 or n_train < 0:
        raise ValueError(
            f"split sizes num_train={n_train} + num_val={n_val} + num_test={n_test} exceed the "
            f"{total} molecules of the dataset; lower --data.num_train / --data.num_val / --data.num_test"
        )
    perm = np.random.default_rng(seed).permutation(total)
    return {
        "train": perm[:n_train],
        "val": perm[n_train : n_train + n_val],
        "test": perm[n_train + n_val : n_train + n_val + n_test],
    }


def save_splits(path: str | os.PathLike, splits: dict[str, np.ndarray]) -> None:
    """Write ``splits`` to ``path`` (``.npz``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **splits)
    os.replace(tmp, path)


def load_splits(path: str | os.PathLike, total: int) -> dict[str, np.ndarray]:
    """Read a split file written by :func:`save_splits` and check the indices fit the dataset."""
    try:
        with np.load(path) as f:
            splits = {k: np.asarray(f[k], dtype=np.int64) for k in ("train", "val", "test")}
    except FileNotFoundError as err:
        raise FileNotFoundError(f"split_file {path} does not exist") from err
    except KeyError as err:
        raise ValueError(f"split_file {path} must contain arrays 'train', 'val' and 'test'") from err
    for name, idx in splits.items():
        if idx.size and (idx.min() < 0 or idx.max() >= total):
            raise ValueError(
                f"split_file {path}: '{name}' holds index {int(idx.max())} but the dataset has {total} molecules"
            )
    return splits
