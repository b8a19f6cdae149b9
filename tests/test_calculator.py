"""The ASE calculator on a trained force model: forces are -dE/dx, symmetry, per-atom energies, neighbour-list reuse."""

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

import atomzoo
from atomzoo.calculator import AtomzooCalculator

FIXTURE = Path(__file__).parent / "data" / "md17_fixture" / "rmd17" / "npz_data" / "rmd17_ethanol.npz"


def ethanol(frame: int = 0) -> Atoms:
    data = np.load(FIXTURE)
    return Atoms(numbers=data["nuclear_charges"], positions=data["coords"][frame])


def fd_force(model, atoms: Atoms, i: int, d: int, h: float = 1e-4) -> float:
    """``-dE/dx`` of atom ``i`` along ``d`` by central differences, a fresh calculator per energy."""
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[i, d] += sign * h
        moved.calc = AtomzooCalculator(model)
        energies.append(moved.get_potential_energy())
    return -(energies[0] - energies[1]) / (2 * h)


@pytest.fixture(scope="module")
def model64(force_checkpoint):
    return atomzoo.load(force_checkpoint, dtype="float64")


def test_forces_are_negative_finite_difference_gradient(model64):
    atoms = ethanol(3)
    atoms.calc = AtomzooCalculator(model64)
    forces = atoms.get_forces()
    fd = np.array([[fd_force(model64, atoms, i, d) for d in range(3)] for i in range(len(atoms))])
    assert np.abs(forces).max() > 0.05  # a real force field, not zeros
    np.testing.assert_allclose(forces, fd, atol=1e-6, rtol=1e-5)


def test_energy_invariant_and_forces_equivariant_under_rotation(model64):
    atoms = ethanol(7)
    q, r = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    rotation *= np.linalg.det(rotation)  # a proper rotation (det +1)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T + np.array([1.0, -2.0, 0.5])
    atoms.calc, rotated.calc = AtomzooCalculator(model64), AtomzooCalculator(model64)
    assert rotated.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(rotated.get_forces(), atoms.get_forces() @ rotation.T, atol=1e-9)
    np.testing.assert_allclose(rotated.get_potential_energies(), atoms.get_potential_energies(), atol=1e-9)


def test_per_atom_energies_add_up_and_free_energy(model64):
    atoms = ethanol(11)
    atoms.calc = AtomzooCalculator(model64)
    energies = atoms.get_potential_energies()
    assert energies.shape == (len(atoms),)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    # the same energy as AtomzooModel.predict (the zoo predict code path)
    assert model64.predict(atoms)["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-8)


def test_neighbor_list_reused_within_skin_and_exact(model64):
    atoms = ethanol(0)
    reused, fresh = AtomzooCalculator(model64, skin=0.5), AtomzooCalculator(model64, skin=0.0)
    rng = np.random.default_rng(0)
    for step in range(4):  # moves of at most 0.05 A from the build: no rebuild
        moved = atoms.copy()
        moved.positions += rng.uniform(-0.025, 0.025, moved.positions.shape)
        moved.calc = reused
        f_reused = moved.get_forces().copy()
        e_reused = moved.get_potential_energy()
        moved.calc = fresh
        assert moved.get_potential_energy() == e_reused  # the same edges in the same order: bit-identical
        np.testing.assert_array_equal(moved.get_forces(), f_reused)
    assert reused.neighbor_list_builds == 1 and fresh.neighbor_list_builds == 4
    far = atoms.copy()
    far.positions[0] += [0.3, 0.0, 0.0]  # beyond skin / 2
    far.calc = reused
    far.get_forces()
    assert reused.neighbor_list_builds == 2


def test_float32_and_float64_agree(force_checkpoint, model64):
    atoms = ethanol(5)
    atoms.calc = AtomzooCalculator(force_checkpoint, dtype="float32")
    e32, f32 = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = AtomzooCalculator(model64)
    assert atoms.get_potential_energy() == pytest.approx(e32, abs=1e-3)
    np.testing.assert_allclose(atoms.get_forces(), f32, atol=1e-3)


def test_calculator_refuses_a_model_without_energy(force_checkpoint):
    model = atomzoo.load(force_checkpoint)
    model.targets = ["homo"]
    with pytest.raises(ValueError, match="target 'energy'"):
        AtomzooCalculator(model)


def test_periodic_structures_are_computed_with_their_images(model64):
    """Ethanol in a 6.5 A periodic box: its images within the cutoff change the energy; translating an
    atom by a lattice vector changes nothing; forces are -FD gradient; predict() agrees."""
    atoms = ethanol(2)
    atoms.set_cell([6.5, 6.5, 6.5])
    atoms.center()
    atoms.pbc = True
    atoms.calc = AtomzooCalculator(model64)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    free = atoms.copy()
    free.pbc = False
    free.calc = AtomzooCalculator(model64)
    assert abs(energy - free.get_potential_energy()) > 1e-3  # the images are seen
    moved = atoms.copy()
    moved.positions[3] += atoms.cell[0] - 2 * atoms.cell[2]
    moved.calc = AtomzooCalculator(model64)
    assert moved.get_potential_energy() == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(moved.get_forces(), forces, atol=1e-9)
    for i, d in [(0, 0), (4, 2), (8, 1)]:
        assert forces[i, d] == pytest.approx(fd_force(model64, atoms, i, d), abs=1e-6)
    out = model64.predict(atoms)
    assert out["energy"] == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(out["forces"], forces, atol=1e-9)
    assert model64.periodic


def test_periodic_input_is_refused_when_the_backbone_cannot_build_images():
    from atomzoo.inference import InputError, check_atoms

    atoms = ethanol(0)
    atoms.set_cell([8.0, 8.0, 8.0])
    atoms.pbc = True
    check_atoms(atoms, [1, 6, 8], periodic_ok=True)
    with pytest.raises(InputError, match="builds molecular graphs only"):
        check_atoms(atoms, [1, 6, 8], periodic_ok=False)


def test_the_calculator_only_reads_the_model(model64):
    """No patched backbone, no torch in the calculator: energies, forces and per-atom energies are
    exactly what the model's one prediction path (AtomzooModel.predict_batch) returns."""
    import ast
    import re

    from atomzoo.nn.batch import atoms_to_batch

    atoms = ethanol(9)
    atoms.calc = AtomzooCalculator(model64)
    energy, forces, energies = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_potential_energies()
    assert "graph" not in vars(model64.objective.backbone)  # Backbone.graph is never replaced
    out = model64.predict_batch(atoms_to_batch([atoms], model64.dtype), forces=True, atomic_energies=True)
    assert energy == float(out["energy"][0]) and np.array_equal(forces, out["forces"].numpy())
    assert np.array_equal(energies, out["atomic_energies"].numpy())
    source = Path(atomzoo.calculator.__file__).read_text()
    nodes = list(ast.walk(ast.parse(source)))
    imported = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
    assert not {m for m in imported if m.split(".")[0] == "torch"}, "the calculator computes nothing itself"
    tree = ast.parse(source)
    for node in ast.walk(tree):  # the code without docstrings and comments (they may name the model's parts)
        body = getattr(node, "body", None)
        docstring = isinstance(body, list) and body and isinstance(body[0], ast.Expr)
        if docstring and isinstance(body[0].value, ast.Constant):
            body.pop(0)
    assert not re.search(r"\.objective\b|autograd|atomref|\.heads\b|\.mean\b|\.std\b", ast.unparse(tree))


def test_candidate_pairs_give_exactly_the_fresh_graph():
    """A batch's candidate_edge_index (a Verlet list at cutoff + skin) yields the fresh graph: same edges,
    same order, same vectors; periodic batches and neighbour caps are refused as for a fresh build."""
    import torch

    from atomzoo.nn.graph import build_graph, radius_graph

    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(13, 3, generator=gen, dtype=torch.float64) * 4.0
    batch = torch.tensor([0] * 6 + [1] * 7)
    candidates = radius_graph(pos, batch, 3.0 + 1.0)
    moved = pos + (torch.rand(13, 3, generator=gen, dtype=torch.float64) - 0.5) * 0.4  # < skin / 2 per atom
    fresh, reused = build_graph(moved, batch, 3.0), build_graph(moved, batch, 3.0, candidates=candidates)
    assert candidates.size(1) > fresh.edge_index.size(1) > 0
    assert torch.equal(reused.edge_index, fresh.edge_index)
    assert torch.equal(reused.vec, fresh.vec) and torch.equal(reused.length, fresh.length)
    with pytest.raises(RuntimeError, match="max_num_neighbors=1"):
        build_graph(moved, batch, 3.0, max_num_neighbors=1, candidates=candidates)
    cell, pbc = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1) * 6.0, torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="candidate_edge_index is for molecules"):
        build_graph(moved, batch, 3.0, cell=cell, pbc=pbc, candidates=candidates)
