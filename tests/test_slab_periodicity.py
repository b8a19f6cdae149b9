"""Periodicity is per direction: a slab (pbc T, T, F) whose non-periodic cell vector is shorter than the
cutoff gets images in x and y only, exactly as ASE's ``neighbor_list`` (issue 31: a mutant treating
every direction of the cell list as periodic survived, because the suite's slab had 9 A of vacuum)."""

import numpy as np
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

from atomzoo.nn.graph import build_graph

CUTOFF = 4.0


def test_a_thin_slab_has_no_images_across_its_non_periodic_direction():
    rng = np.random.default_rng(7)
    cell = np.array([[3.2, 0.0, 0.0], [0.5, 3.0, 0.0], [0.0, 0.0, 2.5]])  # c = 2.5 A < cutoff
    atoms = Atoms("Cu4", scaled_positions=rng.uniform(size=(4, 3)), cell=cell, pbc=[True, True, False])
    pos = torch.tensor(atoms.positions)
    graph = build_graph(pos, torch.zeros(4, dtype=torch.long), CUTOFF, cell=torch.tensor(cell)[None],
                        pbc=torch.tensor([[True, True, False]]))  # fmt: skip
    src, dst = graph.edge_index
    ours = sorted((int(d), int(s), *(int(k) for k in shift)) for s, d, shift in zip(src, dst, graph.shifts))
    i, j, shifts = neighbor_list("ijS", atoms, CUTOFF)
    assert ours == sorted((int(a), int(b), *(int(k) for k in s)) for a, b, s in zip(i, j, shifts))
    assert (graph.shifts[:, 2] == 0).all() and (graph.shifts[:, :2] != 0).any()
