"""Exact duplicate structures: a per-structure hash of elements and rounded positions.

The hash (uint64) of a structure is the wrapping sum over its atoms of a SplitMix64 mix of the atomic
number and the positions rounded to ``10**-DECIMALS`` Angstrom, so it does not depend on the order of
the atoms; two structures with the same elements at the same (rounded) positions get the same hash.
:class:`~atomzoo.datamodules.storage.StoreWriter` writes it as the store's ``structure_hash`` array
when the store is built; the data modules count the validation and test structures that also occur
in the training split (a leak that flatters the metrics) and warn with the numbers.
"""

from __future__ import annotations

import numpy as np

#: positions are compared after rounding to 10**-DECIMALS Angstrom
DECIMALS = 4
HASH_ARRAY = "structure_hash"


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser of uint64 values (wrapping arithmetic)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def structure_hashes(z: np.ndarray, pos: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``[M]`` uint64 hashes of ``M`` structures from their atoms' ``z`` ``[N]`` and ``pos`` ``[N, 3]``
    (Angstrom), ``counts`` ``[M]`` atoms per structure (each at least 1)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0:
        return np.zeros(0, np.uint64)
    q = np.round(np.asarray(pos, dtype=np.float64) * 10**DECIMALS).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        atom = _mix(np.asarray(z, dtype=np.int64).view(np.uint64))
        for k in range(3):
            atom = _mix(atom ^ q[:, k])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return _mix(np.add.reduceat(atom, starts) ^ counts.view(np.uint64))


def shared_with_training(hashes: np.ndarray, splits: dict[str, np.ndarray]) -> dict[str, int]:
    """Number of structures of each non-training split whose hash also occurs in the training split."""
    train = np.asarray(hashes)[splits["train"]]
    return {name: int(np.isin(np.asarray(hashes)[idx], train).sum()) for name, idx in splits.items()
            if name != "train" and idx.size}  # fmt: skip
