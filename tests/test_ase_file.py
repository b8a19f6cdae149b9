"""ASEFileDataModule: extxyz / xyz / ASE db, keys from info, arrays and calculator results, bad input."""

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.db import connect
from ase.io import write

from atomzoo.datamodules import ASEFileDataModule
from atomzoo.datamodules.checks import DataFormatError

FIXTURE = Path(__file__).parent / "data" / "md17_fixture" / "md17_ethanol.npz"


def frames(n=20):
    raw = np.load(FIXTURE)
    out = []
    for i in range(n):
        a = Atoms(numbers=raw["z"], positions=raw["R"][i])
        a.calc = SinglePointCalculator(a, energy=float(raw["E"][i, 0]), forces=raw["F"][i])
        a.info["gap"] = 1.0 + i
        out.append(a)
    return raw, out


def dm_for(path, tmp_path, **kw):
    args = dict(path=str(path), cache_dir=str(tmp_path / "cache"), num_train=10, num_val=5)
    args.update(kw)
    return ASEFileDataModule(**args)


def test_extxyz_energy_forces_properties_and_units(tmp_path):
    raw, atoms = frames()
    write(tmp_path / "md.extxyz", atoms)
    dm = dm_for(tmp_path / "md.extxyz", tmp_path, property_keys=["gap"], energy_factor=0.0433641,
                targets=["energy", "gap"])  # fmt: skip
    dm.setup()
    store = dm.store
    assert len(store) == 20 and store.meta["label_names"] == ["energy", "gap"]
    assert np.allclose(store.arrays["labels"][:, 0], raw["E"][:20, 0] * 0.0433641)
    assert np.allclose(store.arrays["labels"][:, 1], np.arange(1, 21))
    assert np.allclose(store.arrays["forces"][:9], raw["F"][0] * 0.0433641, atol=1e-5)
    assert dm.forces is True and dm.target_info("gap").pooling == "mean"
    batch = next(iter(dm.train_dataloader()))
    assert batch.y.shape == (10, 2) and batch.forces.shape == batch.pos.shape


def test_plain_xyz_label_free(tmp_path):
    _, atoms = frames(5)
    write(tmp_path / "m.xyz", [Atoms(a.numbers, a.positions) for a in atoms], format="xyz")
    dm = dm_for(tmp_path / "m.xyz", tmp_path, energy_key=None, forces_key=None, num_train=3, num_val=1)
    dm.setup()
    assert len(dm.store) == 5 and dm.targets is None and not dm.forces
    assert next(iter(dm.train_dataloader())).pos.shape == (27, 3)


def test_ase_db_with_key_value_pairs_and_index(tmp_path):
    raw, atoms = frames()
    with connect(tmp_path / "x.db") as db:
        for a in atoms:
            db.write(a, gap=a.info["gap"])
    dm = dm_for(tmp_path / "x.db", tmp_path, property_keys=["gap"], index="2:")
    dm.setup()
    assert len(dm.store) == 18
    assert np.allclose(dm.store.arrays["labels"][0], [raw["E"][2, 0], 3.0])


def test_cache_fingerprint_follows_file_and_keys(tmp_path):
    _, atoms = frames(15)
    path = tmp_path / "md.extxyz"
    write(path, atoms)
    a = dm_for(path, tmp_path)
    b = dm_for(path, tmp_path, property_keys=["gap"])
    assert a.store_path() != b.store_path()
    a.setup()
    write(path, atoms[:12])  # the file changes: store is rebuilt
    c = dm_for(path, tmp_path, num_train=5)
    c.setup()
    assert len(c.store) == 12


def _expect(tmp_path, atoms, match, **kw):
    write(tmp_path / "bad.extxyz", atoms)
    dm = dm_for(tmp_path / "bad.extxyz", tmp_path, **kw)
    with pytest.raises(DataFormatError, match=match):
        dm.prepare_data()
    assert not list((tmp_path / "cache").rglob("meta.json"))
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".tmp-" in p.name]


def test_missing_key_names_file_and_record(tmp_path):
    _, atoms = frames(6)
    del atoms[4].info["gap"]
    _expect(tmp_path, atoms, r"bad.extxyz, record 4: no property 'gap'", property_keys=["gap"])


def test_nan_positions_and_labels(tmp_path):
    _, atoms = frames(6)
    atoms[3].positions[1, 0] = np.nan
    _expect(tmp_path, atoms, "positions of record 3 is NaN", forces_key=None, energy_key=None)
    _, atoms = frames(6)
    atoms[2].info["gap"] = float("inf")
    _expect(tmp_path, atoms, "labels of record 2 is NaN", property_keys=["gap"])


def test_bad_atomic_number_empty_structure_and_unreadable(tmp_path):
    _, atoms = frames(4)
    plain = [Atoms(a.numbers, a.positions) for a in atoms]
    plain[1].numbers[0] = 0  # ASE writes 'X' (dummy atom, Z = 0)
    _expect(tmp_path, plain, r"record 1.*atomic number 0 outside 1..100", energy_key=None, forces_key=None)
    plain = [Atoms(a.numbers, a.positions) for a in atoms]
    plain[2] = Atoms()
    _expect(tmp_path, plain, r"record 2: the structure has no atoms", energy_key=None, forces_key=None)
    (tmp_path / "junk.extxyz").write_text("3\ncomment\nC 0 0\n")
    dm = dm_for(tmp_path / "junk.extxyz", tmp_path, energy_key=None, forces_key=None)
    with pytest.raises(DataFormatError, match="junk.extxyz: ASE could not read record 0 \\(0-based"):
        dm.prepare_data()


def test_mismatched_forces_shape(tmp_path):
    _, atoms = frames(3)
    atoms[1].calc.results["forces"] = atoms[1].calc.results["forces"][:, :2]
    write(tmp_path / "f.traj", atoms)
    dm = dm_for(tmp_path / "f.traj", tmp_path, num_train=1, num_val=1)
    with pytest.raises(DataFormatError, match=r"record 1: forces have shape \(9, 2\)"):
        dm.prepare_data()
