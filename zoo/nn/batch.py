"""Helpers for PyG batches of atomic structures.

A batch is a PyG ``Batch`` (or a single ``Data``) with ``z`` ``[N]``, ``pos`` ``[N, 3]`` (Angstrom) and
``batch`` ``[N]`` (structure index of each atom, sorted); see :mod:`atomzoo.backbones.base` for the
fields a backbone reads.

- :func:`num_graphs` -- number of structures in a batch.
- :func:`with_positions` -- a shallow copy of a batch with new positions (noise, finite differences,
  autograd forces).
- :func:`structure_arrays` -- the arrays of one ``ase.Atoms`` (numbers, positions, cell, pbc): the one
  place a structure is read from ASE (prediction batches here, the ASE-file DataModule's store).
- :func:`atoms_to_batch` -- a batch of ``ase.Atoms`` (what ``atomzoo.load(...).predict`` and the ASE
  calculator feed the model).
"""

from __future__ import annotations

import numpy as np
import torch
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


def structure_arrays(atoms, length_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(z [n] int64, pos [n, 3] float64, cell [3, 3] float64, pbc [3] bool)`` of one ``ase.Atoms``.

    Positions and lattice vectors (rows) are multiplied by ``length_factor`` (the file's length unit
    to Angstrom, :func:`atomzoo.units.conversion_factor`; 1 for ASE's Angstrom). ``cell`` is all
    zeros when no direction is periodic (a box on a free molecule is ignored, as ASE does).
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell, dtype=np.float64) * length_factor if pbc.any() else np.zeros((3, 3))
    pos = np.asarray(atoms.positions, dtype=np.float64) * length_factor
    return np.asarray(atoms.numbers).astype(np.int64), pos, cell, pbc


def atoms_to_batch(atoms_list, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """A PyG ``Batch`` of ASE structures: ``z`` ``[N]`` long, ``pos`` ``[N, 3]`` ``dtype`` (Angstrom),
    ``batch`` ``[N]``, ``idx`` ``[B]`` (position in ``atoms_list``).

    When any structure is periodic, every structure also gets ``cell`` ``[1, 3, 3]`` (lattice vectors as
    rows, Angstrom, ``dtype``) and ``pbc`` ``[1, 3]`` bool, as the DataModules give them: the backbones'
    radius graph then adds the periodic images (:func:`atomzoo.nn.graph.build_graph`). Positions are
    taken as ASE gives them (Angstrom), through :func:`structure_arrays`.
    """
    from torch_geometric.data import Batch, Data

    periodic = any(np.asarray(a.pbc, dtype=bool).any() for a in atoms_list)
    items = []
    for k, atoms in enumerate(atoms_list):
        z, pos, cell, pbc = structure_arrays(atoms)
        item = Data(z=torch.as_tensor(z, dtype=torch.long), pos=torch.as_tensor(pos, dtype=dtype),
                    idx=torch.tensor([k]))
        if periodic:
            item.cell = torch.as_tensor(cell, dtype=dtype)[None]
            item.pbc = torch.as_tensor(pbc)[None]
        items.append(item)
    return Batch.from_data_list(items).to(device)


__all__ = ["atoms_to_batch", "num_graphs", "structure_arrays", "with_positions"]
