"""Validation of raw arrays before they go into a store: every error names the file and the record.

Used by the MD17/rMD17, ASE-file and PCQM4Mv2 readers. A reader calls these on each chunk *before*
appending it to a :class:`~atomzoo.datamodules.storage.StoreWriter`; the raised error aborts the writer,
which removes its temporary directory, so bad input never leaves a partial cache behind.
"""

from __future__ import annotations

import numpy as np

from atomzoo.nn.statistics import MAX_Z  # largest atomic number any reader accepts (shared with the models' tables)


class DataFormatError(ValueError):
    """A raw data file is malformed (wrong keys, shapes, values); the message names file and record."""


def first_bad(mask: np.ndarray) -> int:
    """Index of the first ``True`` in ``mask`` (flattened over trailing axes per leading row)."""
    rows = mask.reshape(mask.shape[0], -1).any(axis=1) if mask.ndim > 1 else mask
    return int(np.flatnonzero(rows)[0])


def check_atomic_numbers(z: np.ndarray, where: str, record_offset: int = 0, counts: np.ndarray | None = None) -> None:
    """Raise unless every atomic number is an integer in 1..100.

    ``z`` is one structure's atoms (``where`` names the file and record; the message adds the atom), or,
    with ``counts`` (atoms per record), the atoms of several records, the first of them record
    ``record_offset`` (the message adds the record and the atom within it).
    """
    z = np.asarray(z)
    if z.size and (not np.issubdtype(z.dtype, np.integer) and not np.all(np.mod(z, 1) == 0)):
        raise DataFormatError(f"{where}: atomic numbers must be integers, got dtype {z.dtype}")
    bad = (z < 1) | (z > MAX_Z)
    if bad.any():
        atom = int(np.flatnonzero(bad)[0])
        location = f"atom {atom}"
        if counts is not None:
            ends = np.cumsum(counts)
            record = int(np.searchsorted(ends, atom, side="right"))
            first = int(ends[record - 1]) if record else 0
            location = f"record {record_offset + record}, atom {atom - first}"
        raise DataFormatError(f"{where}: atomic number {int(z.flat[atom])} outside 1..{MAX_Z} ({location})")


def check_finite(array: np.ndarray, name: str, where: str, record_offset: int = 0, counts: np.ndarray | None = None) -> None:
    """Raise if ``array`` holds NaN/inf; rows are records, or atoms mapped to records by ``counts``."""
    bad = ~np.isfinite(np.asarray(array, dtype=np.float64))
    if bad.any():
        row = first_bad(bad)
        record = row if counts is None else int(np.searchsorted(np.cumsum(counts), row, side="right"))
        raise DataFormatError(f"{where}: {name} of record {record_offset + record} is NaN or infinite")


def check_counts(counts: np.ndarray, where: str, record_offset: int = 0) -> None:
    """Raise on empty structures (zero atoms)."""
    counts = np.asarray(counts)
    if (counts <= 0).any():
        raise DataFormatError(f"{where}: record {record_offset + first_bad(counts <= 0)} has no atoms")
