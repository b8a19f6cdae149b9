"""Splits follow their seed: --data.split_seed gives the same split every time and another seed another
split, through the DataModule as through ``random_split`` (issue 31: a mutant ignoring the seed survived)."""

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from atomzoo.datamodules import ASEFileDataModule
from atomzoo.datamodules.splits import random_split


def test_the_seed_chooses_the_permutation():
    a, again, other = random_split(50, 30, 10, 10, seed=0), random_split(50, 30, 10, 10, seed=0), random_split(
        50, 30, 10, 10, seed=1)  # fmt: skip
    perm = np.random.default_rng(1).permutation(50)  # the documented rule: a seeded numpy permutation
    assert all(np.array_equal(a[k], again[k]) for k in a)
    assert not np.array_equal(a["train"], other["train"])
    np.testing.assert_array_equal(np.concatenate([other["train"], other["val"], other["test"]]), perm)


@pytest.mark.parametrize("seed", [3, 4])
def test_the_datamodule_splits_by_its_split_seed(tmp_path, seed):
    structures = []
    for k in range(20):
        atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7 + 0.01 * k]])
        atoms.calc = SinglePointCalculator(atoms, energy=float(k))
        structures.append(atoms)
    write(tmp_path / "h2.extxyz", structures)
    dm = ASEFileDataModule(path=str(tmp_path / "h2.extxyz"), cache_dir=str(tmp_path / "cache"), forces_key=None,
                           num_train=12, num_val=4, split_seed=seed)  # fmt: skip
    dm.setup()
    expected = random_split(20, 12, 4, None, seed=seed)
    assert all(np.array_equal(dm.splits[k], expected[k]) for k in expected)
    other = random_split(20, 12, 4, None, seed=seed + 10)
    assert not np.array_equal(dm.splits["train"], other["train"])
