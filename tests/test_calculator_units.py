"""The ASE calculator answers in eV and eV/A whatever unit the model was trained in (issue 31: a mutant
that skipped the conversion survived, every tested model being in eV)."""

import numpy as np
import pytest
from ase import Atoms

import atomzoo
from atomzoo.calculator import AtomzooCalculator
from atomzoo.units import conversion_factor


def test_a_kcal_per_mol_model_gives_ev_in_the_calculator(force_checkpoint):
    model = atomzoo.load(force_checkpoint)
    atoms = Atoms("CCOHHHHHH", positions=np.random.default_rng(0).normal(scale=1.2, size=(9, 3)))
    atoms.positions[:3] = [[0, 0, 0], [1.5, 0, 0], [2.2, 1.2, 0]]
    raw = model.predict(atoms)  # in the model's own unit
    model.units = ["kcal/mol"]  # as a model trained on MD17 with --data.units kcal/mol reports it
    atoms.calc = AtomzooCalculator(model)
    factor = conversion_factor("kcal/mol", "energy")
    assert factor == pytest.approx(0.0433641, rel=1e-5)
    assert atoms.get_potential_energy() == pytest.approx(raw["energy"] * factor, rel=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), raw["forces"] * factor, rtol=1e-5, atol=1e-7)
