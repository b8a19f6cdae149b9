"""Helpers for PyG batches of atomic structures.

A batch is a PyG ``Batch`` (or a single ``Data``) with ``z`` ``[N]``, ``pos`` ``[N, 3]`` (Angstrom) and
``batch`` ``[N]`` (structure index of each atom, sorted); see :mod:`atomzoo.backbones.base` for the
fields a backbone reads.

- :func:`num_graphs` -- number of structures in a batch.
- :func:`with_positions` -- a shallow copy of a batch with new positions (noise, finite differences,
  autograd forces).
"""

from __future__ import annotations

from torch import Tensor


def num_graphs(data) -> int:
    """Number of molecules in a PyG ``Batch`` or single ``Data``."""
    n = getattr(data, "num_graphs", None)
    if n is not None:
        return int(n)
    return int(data.batch.max()) + 1 if data.batch.numel() else 0


def with_positions(data, pos: Tensor):
    """A shallow copy of ``data`` whose ``pos`` is replaced (other tensors are shared, not copied)."""
    out = data.__copy__()
    out.pos = pos
    return out


__all__ = ["num_graphs", "with_positions"]
