"""Periodic structures and the cell-list neighbour list (atomzoo.nn.graph, Backbone.graph).

Checks against ASE's own ``neighbor_list`` (images counted exactly, small and skewed cells, a cell
smaller than twice the cutoff, mixed boundary conditions), equality of the two pair-enumeration
paths, invariance of every built-in backbone under lattice translation of one atom and under
re-wrapping, finite-difference forces and cell gradients on a periodic structure, and the refusal
of periodic input by a backbone that does not declare support.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list
from torch_geometric.data import Batch, Data

from atomzoo.backbones import Backbone, BackboneOutput, PaiNN, SchNet
from atomzoo.nn.graph import ALL_PAIRS_MAX_ATOMS, build_graph

CUTOFF = 3.0


def triples(graph) -> set[tuple[int, int, int, int, int]]:
    shifts = graph.shifts if graph.shifts is not None else torch.zeros(graph.edge_index.size(1), 3, dtype=torch.long)
    return {(int(d), int(s), *map(int, sh)) for s, d, sh in zip(graph.edge_index[0], graph.edge_index[1], shifts)}


def ase_triples(atoms: Atoms, cutoff: float) -> set[tuple[int, int, int, int, int]]:
    i, j, shift = neighbor_list("ijS", atoms, cutoff)
    return {(int(a), int(b), *map(int, s)) for a, b, s in zip(i, j, shift)}


def random_crystal(cell, n, pbc=True, seed=0) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = np.asarray(cell, float)
    frac = rng.random((n, 3))
    return Atoms(numbers=rng.choice([1, 6, 8], n), positions=frac @ cell, cell=cell, pbc=pbc)


def as_batch(structures: list[Atoms], dtype=torch.float64) -> Batch:
    return Batch.from_data_list([
        Data(z=torch.as_tensor(a.numbers, dtype=torch.long), pos=torch.as_tensor(a.positions, dtype=dtype),
             cell=torch.as_tensor(np.asarray(a.cell), dtype=dtype).unsqueeze(0),
             pbc=torch.as_tensor(a.pbc, dtype=torch.bool).unsqueeze(0))
        for a in structures
    ])


CELLS = {
    "cubic": (np.eye(3) * 7.0, True),
    "skewed": (np.array([[6.0, 0.0, 0.0], [2.5, 5.5, 0.0], [1.0, 1.5, 6.5]]), True),
    "smaller_than_twice_cutoff": (np.array([[2.2, 0.0, 0.0], [0.4, 2.5, 0.0], [0.3, 0.2, 2.8]]), True),
    "slab": (np.array([[5.0, 0.0, 0.0], [1.0, 4.5, 0.0], [0.0, 0.0, 9.0]]), [True, True, False]),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_images_match_ase_neighbor_list(name):
    cell, pbc = CELLS[name]
    atoms = random_crystal(cell, 6, pbc, seed=len(name))
    batch = as_batch([atoms])
    graph = build_graph(batch.pos, batch.batch, CUTOFF, cell=batch.cell, pbc=batch.pbc)
    expected = ase_triples(atoms, CUTOFF)
    assert triples(graph) == expected
    assert len(expected) > 0
    if name == "smaller_than_twice_cutoff":  # an atom neighbours its own images
        assert any(d == s for d, s, *_ in expected)
    # the edge vectors are the image vectors ASE computes
    i, j, dvec = neighbor_list("ijD", atoms, CUTOFF)
    ours = {(int(d), int(s), *np.round(v, 6)) for s, d, v in zip(*graph.edge_index, graph.vec.detach().numpy())}
    assert ours == {(int(a), int(b), *np.round(v, 6)) for a, b, v in zip(i, j, dvec)}


@pytest.mark.parametrize("name", list(CELLS) + ["molecules"])
def test_pair_mask_selects_exactly_one_direction_of_every_pair(name):
    """SchNet computes each filter once per pair (Graph.pair_mask): the selected edges and their
    reverses (dst, src, -shift) must be the whole graph, each edge exactly once, also for an atom's
    own images in a cell smaller than twice the cutoff."""
    if name == "molecules":
        rng = np.random.default_rng(1)
        batch = as_batch([Atoms(numbers=[6] * n, positions=rng.random((n, 3)) * 4.0) for n in (1, 5, 12)])
        graph = build_graph(batch.pos, batch.batch, CUTOFF)
    else:
        cell, pbc = CELLS[name]
        batch = as_batch([random_crystal(cell, 6, pbc, seed=len(name))])
        graph = build_graph(batch.pos, batch.batch, CUTOFF, cell=batch.cell, pbc=batch.pbc)
    everything = sorted(triples(graph))
    mask = graph.pair_mask()
    assert int(mask.sum()) * 2 == len(everything) > 0
    selected = [t for t, keep in zip(
        [(int(d), int(s), *map(int, sh)) for s, d, sh in zip(*graph.edge_index, graph.shifts if graph.shifts is not None
                                                             else torch.zeros(mask.numel(), 3, dtype=torch.long))],
        mask.tolist()) if keep]
    reverses = [(s, d, -a, -b, -c) for d, s, a, b, c in selected]
    assert sorted(selected + reverses) == everything


def test_batch_of_periodic_structures_and_a_molecule():
    crystal = random_crystal(CELLS["skewed"][0], 5, True, seed=3)
    molecule = random_crystal(np.eye(3) * 4.0, 7, False, seed=4)
    batch = as_batch([crystal, molecule, crystal])
    graph = build_graph(batch.pos, batch.batch, CUTOFF, cell=batch.cell, pbc=batch.pbc)
    expected = set()
    for offset, atoms in ((0, crystal), (5, molecule), (12, crystal)):
        expected |= {(d + offset, s + offset, *sh) for d, s, *sh in ase_triples(atoms, CUTOFF)}
    assert triples(graph) == expected


def test_both_paths_agree_on_molecules_including_pairs_at_exactly_the_cutoff():
    rng = np.random.default_rng(0)
    structures = [Atoms(numbers=[6] * n, positions=rng.random((n, 3)) * 5.0) for n in (3, 9, 17)]
    # two atoms exactly one cutoff apart (float64-exact): never an edge in either path ("< cutoff")
    structures.append(Atoms(numbers=[1, 1, 1], positions=[[0, 0, 0], [CUTOFF, 0, 0], [CUTOFF * 0.5, 1.0, 0]]))
    batch = as_batch(structures)
    a = build_graph(batch.pos, batch.batch, CUTOFF, method="all_pairs")
    b = build_graph(batch.pos, batch.batch, CUTOFF, method="cell_list")
    assert triples(a) == triples(b) and a.edge_index.size(1) == b.edge_index.size(1)
    order = sorted(range(b.edge_index.size(1)), key=lambda e: (int(b.edge_index[1, e]), int(b.edge_index[0, e])))
    assert torch.equal(a.edge_index, b.edge_index[:, order])
    torch.testing.assert_close(a.vec, b.vec[order])
    last = int(batch.ptr[-2])
    pairs = {(int(s) - last, int(d) - last) for s, d in a.edge_index.T if s >= last}
    assert pairs == {(0, 2), (2, 0), (1, 2), (2, 1)}


def test_auto_switches_to_the_cell_list_for_large_structures():
    rng = np.random.default_rng(1)
    n = ALL_PAIRS_MAX_ATOMS + 50
    pos = torch.as_tensor(rng.random((n, 3)) * 12.0)
    batch = torch.zeros(n, dtype=torch.long)
    auto = build_graph(pos, batch, CUTOFF)
    reference = build_graph(pos, batch, CUTOFF, method="all_pairs")
    assert triples(auto) == triples(reference) and auto.edge_index.size(1) == reference.edge_index.size(1)
    # the cell list keeps vesin's order (all pairs sorts by dst): this tells the two paths apart
    assert not torch.equal(auto.edge_index, reference.edge_index)


def test_errors_name_the_problem():
    atoms = random_crystal(np.eye(3) * 5.0, 4)
    batch = as_batch([atoms])
    with pytest.raises(ValueError, match="all_pairs"):
        build_graph(batch.pos, batch.batch, CUTOFF, cell=batch.cell, pbc=batch.pbc, method="all_pairs")
    with pytest.raises(ValueError, match="no cell"):
        build_graph(batch.pos, batch.batch, CUTOFF, pbc=batch.pbc)
    with pytest.raises(ValueError, match="zero volume"):
        build_graph(batch.pos, batch.batch, CUTOFF, cell=torch.zeros(1, 3, 3, dtype=torch.float64), pbc=batch.pbc)


def backbones():
    out = [
        SchNet(width=16, num_filters=16, num_interactions=2, num_rbf=12, cutoff=CUTOFF),
        PaiNN(width=16, num_interactions=2, num_rbf=12, cutoff=CUTOFF),
    ]
    try:
        from atomzoo.backbones import MACE

        out.append(MACE(hidden_irreps="8x0e+8x1o", max_ell=1, correlation=2, radial_MLP=[8], cutoff=CUTOFF,
                        atomic_numbers=[1, 6, 8], dtype="float64"))
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("model", backbones(), ids=lambda m: type(m).__name__)
def test_backbones_are_invariant_to_lattice_translation_and_rewrapping(model):
    torch.manual_seed(0)
    model = model.double().eval()
    atoms = random_crystal(CELLS["skewed"][0], 5, True, seed=7)
    reference = model(as_batch([atoms])).scalars
    moved = atoms.copy()
    moved.positions[2] += 2 * moved.cell[0] - moved.cell[2]  # one atom by a lattice vector
    torch.testing.assert_close(model(as_batch([moved])).scalars, reference, rtol=0, atol=1e-10)
    shifted = atoms.copy()
    shifted.positions += np.array([3.1, -1.7, 4.4])
    shifted.wrap()  # every atom re-wrapped into the cell
    torch.testing.assert_close(model(as_batch([shifted])).scalars, reference, rtol=0, atol=1e-10)
    # and the crystal is not the molecule made of the same atoms
    molecule = atoms.copy()
    molecule.pbc = False
    assert not torch.allclose(model(as_batch([molecule])).scalars, reference, atol=1e-6)


@pytest.mark.parametrize("model", backbones(), ids=lambda m: type(m).__name__)
def test_periodic_forces_and_cell_gradient_match_finite_differences(model):
    torch.manual_seed(0)
    model = model.double().eval()
    readout = torch.nn.Linear(model.width, 1).double()
    atoms = random_crystal(CELLS["smaller_than_twice_cutoff"][0] * 1.3, 3, True, seed=2)
    batch = as_batch([atoms])

    def energy(pos, cell):
        data = batch.clone()
        data.pos, data.cell = pos, cell
        return readout(model(data).scalars).sum()

    pos = batch.pos.clone().requires_grad_(True)
    cell = batch.cell.clone().requires_grad_(True)
    grad_pos, grad_cell = torch.autograd.grad(energy(pos, cell), (pos, cell))
    h = 1e-5
    for tensor, grad, index in ((batch.pos, grad_pos, (1, 2)), (batch.pos, grad_pos, (0, 0)),
                                (batch.cell, grad_cell, (0, 1, 0)), (batch.cell, grad_cell, (0, 2, 2))):
        plus, minus = tensor.clone(), tensor.clone()
        plus[index] += h
        minus[index] -= h
        args = (plus, batch.cell) if tensor is batch.pos else (batch.pos, plus)
        args_m = (minus, batch.cell) if tensor is batch.pos else (batch.pos, minus)
        numeric = (energy(*args) - energy(*args_m)) / (2 * h)
        assert abs(float(numeric) - float(grad[index])) < 1e-6 * max(1.0, abs(float(numeric))), index
    assert float(grad_cell.abs().sum()) > 0


class DistanceOnly(Backbone):
    """A custom backbone that computes distances itself (so it would ignore the cell)."""

    def __init__(self):
        super().__init__(width=1, cutoff=CUTOFF)

    def forward(self, data, condition=None):
        graph = self.graph(data)
        return BackboneOutput(scalars=data.pos.norm(dim=-1, keepdim=True), vectors=None, graph=graph)


def test_a_backbone_without_periodic_support_refuses_periodic_input():
    atoms = random_crystal(np.eye(3) * 5.0, 4)
    with pytest.raises(ValueError, match="periodic = True"):
        DistanceOnly()(as_batch([atoms]))
    molecule = atoms.copy()
    molecule.pbc = False
    assert DistanceOnly()(as_batch([molecule])).scalars.shape == (4, 1)
