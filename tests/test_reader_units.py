"""Every length the ASE-file reader stores is in Angstrom: a periodic file in Bohr gives the same store as
the same crystal written in Angstrom (positions *and* lattice vectors converted; issue 31: a mutant that
left the cell in Bohr survived every test)."""

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.units import Bohr

from atomzoo.datamodules import ASEFileDataModule


def crystals(scale: float) -> list:
    """Eight rattled Cu fcc cells, lengths divided by ``scale`` (Bohr: ``scale = Bohr``)."""
    out = []
    rng = np.random.default_rng(0)
    for k in range(8):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.01 * k, cubic=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.set_cell(atoms.cell / scale, scale_atoms=True)
        atoms.calc = SinglePointCalculator(atoms, energy=-3.0 * k, forces=np.zeros((len(atoms), 3)))
        out.append(atoms)
    return out


def store_of(tmp_path, name: str, scale: float, length_unit: str):
    write(tmp_path / f"{name}.extxyz", crystals(scale))
    dm = ASEFileDataModule(path=str(tmp_path / f"{name}.extxyz"), cache_dir=str(tmp_path / f"cache-{name}"),
                           length_unit=length_unit, num_train=6, num_val=1)  # fmt: skip
    dm.setup()
    return dm.store


def test_a_periodic_file_in_bohr_is_stored_in_angstrom(tmp_path):
    angstrom = store_of(tmp_path, "a", 1.0, "Angstrom")
    bohr = store_of(tmp_path, "b", Bohr, "Bohr")
    assert np.asarray(angstrom.arrays["cell"]).max() == pytest.approx(3.67, abs=1e-6)
    for name in ("pos", "cell"):
        np.testing.assert_allclose(np.asarray(bohr.arrays[name]), np.asarray(angstrom.arrays[name]), rtol=0, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(bohr.arrays["pbc"]), True)
