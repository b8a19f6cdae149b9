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
BAD = Path(__file__).parent / "data" / "bad_inputs"


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
    dm = dm_for(tmp_path / "md.extxyz", tmp_path, property_keys=["gap"], energy_unit="kcal/mol",
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
    _expect(tmp_path, atoms, r"bad.extxyz, record 4: no property under key 'gap'", property_keys=["gap"])


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


def test_an_x_atom_error_names_its_own_record(tmp_path):
    _, atoms = frames(5)
    plain = [Atoms(a.numbers, a.positions) for a in atoms]
    plain[3].numbers[2] = 0  # 'X' in record 3, atom 2
    write(tmp_path / "x.extxyz", plain)
    dm = dm_for(tmp_path / "x.extxyz", tmp_path, energy_key=None, forces_key=None, num_train=2, num_val=1)
    with pytest.raises(DataFormatError) as err:
        dm.prepare_data()
    assert str(err.value).endswith("x.extxyz, record 3: atomic number 0 outside 1..100 (atom 2)"), str(err.value)


def test_mismatched_forces_shape(tmp_path):
    _, atoms = frames(3)
    atoms[1].calc.results["forces"] = atoms[1].calc.results["forces"][:, :2]
    write(tmp_path / "f.traj", atoms)
    dm = dm_for(tmp_path / "f.traj", tmp_path, num_train=1, num_val=1)
    with pytest.raises(DataFormatError, match=r"record 1: key 'forces' \(forces\) has shape \(9, 2\); forces need .* shape \(9, 3\)"):
        dm.prepare_data()


# ----- issue 19: the bad inputs of real users' files (tests/data/bad_inputs/) -------------------------------
def test_per_atom_energy_column_is_refused_with_shapes(tmp_path):
    """A per-atom ``energies`` column given as energy_key was read as its first atom's value."""
    dm = dm_for(BAD / "per-atom-energy-key/per_atom_energies.extxyz", tmp_path, energy_key="energies", forces_key=None)
    with pytest.raises(DataFormatError, match=r"per_atom_energies.extxyz, record 0: key 'energies' \(energy\) has "
                       r"shape \(5,\); the energy needs one value per structure.*one value per atom \(5 atoms\)"):
        dm.prepare_data()
    assert not list((tmp_path / "cache").rglob("meta.json"))


def test_every_role_checks_its_shape(tmp_path):
    _, atoms = frames(4)
    atoms[2].info["gap"] = np.array([1.0, 2.0])
    _expect(tmp_path, atoms, r"record 2: key 'gap' \(property\) has shape \(2,\); the property needs one value",
            property_keys=["gap"])
    _, atoms = frames(4)
    atoms[1].info["gap"] = "high"
    _expect(tmp_path, atoms, r"record 1: key 'gap' \(property\) holds 'high', not a number", property_keys=["gap"])


def test_periodic_structures_keep_their_cell_and_images(tmp_path):
    """The bad-input case: a 4-atom Cu crystal must not be predicted like the free 4-atom cluster, and
    moving one atom by a lattice vector must not change the prediction."""
    import torch
    from ase.io import read

    from atomzoo.backbones import SchNet

    crystal = read(BAD / "periodic-cell/cu_bulk.extxyz", index=0)
    moved = crystal.copy()
    moved.positions[1] += crystal.cell[0] - 2 * crystal.cell[2]
    cluster = crystal.copy()
    cluster.pbc = False
    slab = crystal.copy()
    slab.pbc = [True, True, False]
    write(tmp_path / "mixed.extxyz", [crystal, moved, cluster, slab])
    dm = dm_for(tmp_path / "mixed.extxyz", tmp_path, num_train=2, num_val=1, energy_key=None, forces_key=None)
    dm.prepare_data()
    dm.setup("fit")
    from torch_geometric.data import Batch

    from atomzoo.datamodules.base import StoreDataset

    batch = Batch.from_data_list([StoreDataset(dm.store, np.arange(4), None)[i] for i in range(4)])
    assert batch.pbc.tolist() == [[True] * 3, [True] * 3, [False] * 3, [True, True, False]]
    torch.testing.assert_close(batch.cell[0], torch.tensor(np.asarray(crystal.cell), dtype=torch.float32))
    torch.manual_seed(0)
    model = SchNet(width=16, num_filters=16, num_interactions=2, num_rbf=12, cutoff=4.0).eval()
    with torch.no_grad():
        scalars = model(batch).scalars
    energy = torch.zeros(4).index_add_(0, batch.batch, scalars.sum(-1))
    assert energy[1] == pytest.approx(float(energy[0]), abs=1e-4)  # lattice translation of one atom
    assert abs(float(energy[2] - energy[0])) > 1e-3  # the crystal is not the cluster
    assert abs(float(energy[3] - energy[0])) > 1e-3  # nor the slab


def test_periodic_structure_without_a_cell_is_refused(tmp_path):
    _, atoms = frames(4)  # one periodic direction and no lattice vectors
    atoms[2].pbc = [False, False, True]
    _expect(tmp_path, atoms, r"record 2: the structure is periodic \(pbc=\[False, False, True\]\) but its cell .* zero volume")


def test_net_charge_and_spin_are_reported_not_dropped_silently(tmp_path):
    _, atoms = frames(6)
    atoms[1].info["charge"] = -1
    atoms[4].info["spin"] = 1
    atoms[0].info["charge"] = 0  # neutral: nothing to say
    write(tmp_path / "c.extxyz", atoms)
    dm = dm_for(tmp_path / "c.extxyz", tmp_path, num_train=3, num_val=1)
    with pytest.warns(UserWarning, match=r"c.extxyz: the models ignore non-zero 'charge' in 1 structures, non-zero "
                      r"'spin' in 1 structures"):
        dm.setup()
    assert dm.store.meta["ignored"] == {"charge": 1, "spin": 1}


def test_closed_shell_singlets_are_quiet_and_any_capitalisation_of_charge_is_reported(tmp_path):
    import warnings

    _, atoms = frames(6)
    for a in atoms:
        a.info["multiplicity"] = 1  # closed-shell singlet: what the models assume, nothing to say
    write(tmp_path / "singlet.extxyz", atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm_for(tmp_path / "singlet.extxyz", tmp_path, num_train=3, num_val=1).setup()
    atoms[2].info["Charge"] = 2  # as some writers spell it
    atoms[3].info["multiplicity"] = 3  # a triplet
    atoms[4].info["SPIN_MULTIPLICITY"] = 2
    write(tmp_path / "charged.extxyz", atoms)
    dm = dm_for(tmp_path / "charged.extxyz", tmp_path, num_train=3, num_val=1)
    with pytest.warns(UserWarning, match=r"charged.extxyz: the models ignore non-zero 'Charge' in 1 structures, "
                      r"'multiplicity' other than 1 in 1 structures, 'SPIN_MULTIPLICITY' other than 1 in 1 structures"):
        dm.setup()


def test_a_stress_column_is_reported_as_ignored(tmp_path):
    raw, atoms = frames(6)
    for i, a in enumerate(atoms):
        a.calc = SinglePointCalculator(a, energy=float(raw["E"][i, 0]), forces=raw["F"][i], stress=np.full(6, 0.01 * i))
    write(tmp_path / "s.extxyz", atoms)
    dm = dm_for(tmp_path / "s.extxyz", tmp_path, num_train=3, num_val=1)
    with pytest.warns(UserWarning, match=r"s.extxyz: the models ignore 'stress' in 6 structures \(not trained on"):
        dm.setup()
    assert dm.store.meta["ignored"] == {"stress": 6}


def test_structures_shared_between_splits_are_counted(tmp_path):
    import re
    import warnings

    _, atoms = frames(12)
    write(tmp_path / "twice.extxyz", atoms + atoms)  # record i and i + 12: the same structure
    dm = dm_for(tmp_path / "twice.extxyz", tmp_path, num_train=12, num_val=6)
    with pytest.warns(UserWarning, match=r"twice.extxyz.*also in the training split") as caught:
        dm.setup("fit")
    train = set(dm.splits["train"] % 12)
    expected = {s: sum(int(i % 12 in train) for i in dm.splits[s]) for s in ("val", "test")}
    assert expected["val"] + expected["test"] > 0
    message = next(str(w.message) for w in caught if "training split" in str(w.message))
    assert re.search(rf"{expected['val']} of 6 validation and {expected['test']} of 6 test structures", message), message
    write(tmp_path / "once.extxyz", atoms)
    with warnings.catch_warnings():  # distinct structures: nothing to say
        warnings.simplefilter("error")
        dm_for(tmp_path / "once.extxyz", tmp_path, num_train=6, num_val=3).setup("fit")


def test_sizing_val_and_test_leaves_the_rest_for_training(tmp_path):
    _, atoms = frames(24)
    write(tmp_path / "m.extxyz", atoms)
    dm = ASEFileDataModule(path=str(tmp_path / "m.extxyz"), cache_dir=str(tmp_path / "cache"), num_val=4, num_test=4)
    dm.setup()
    assert [dm.splits[s].size for s in ("train", "val", "test")] == [16, 4, 4]
    assert np.unique(np.concatenate(list(dm.splits.values()))).size == 24
    default = ASEFileDataModule(path=str(tmp_path / "m.extxyz"), cache_dir=str(tmp_path / "cache"))
    default.setup()  # nothing sized: 0.8 / 0.1 / the rest, as before
    assert [default.splits[s].size for s in ("train", "val", "test")] == [19, 2, 3]


def test_hartree_bohr_forces_are_converted_by_energy_over_length(tmp_path):
    from ase.io import read

    folder = BAD / "hartree-bohr-forces"
    dm = dm_for(folder / "qc_units.extxyz", tmp_path, energy_key="E_hartree", forces_key="F_hartree_bohr",
                energy_unit="Hartree", length_unit="Bohr")  # fmt: skip
    dm.setup()
    ref = np.load(folder / "ref_forces_eV_A.npy")
    frames_ = read(folder / "qc_units.extxyz", ":")
    n0 = len(frames_[0])
    assert ref.shape == dm.store.arrays["forces"].shape  # all atoms of all frames, eV/A
    assert np.allclose(dm.store.arrays["forces"], ref, rtol=1e-5, atol=1e-6)
    assert np.allclose(dm.store.arrays["labels"][0, 0], frames_[0].info["E_hartree"] * 27.211386024367243)
    assert np.allclose(dm.store.arrays["pos"][:n0], frames_[0].positions * 0.5291772105638411, atol=1e-6)
    units = dm.store.meta["units"]
    assert units["energy"] == "eV" and units["forces"] == "eV/A" and units["source_forces"] == "Hartree/Bohr"
    assert units["force_factor"] == pytest.approx(27.211386024367243 / 0.5291772105638411)
    with pytest.raises(ValueError, match=r"energy_factor=27.2.* no longer accepted.*energy_unit Hartree"):
        dm_for(folder / "qc_units.extxyz", tmp_path, energy_factor=27.211386246)
    with pytest.raises(ValueError, match=r"energy_unit='hartree' is not a known energy unit; choose one of eV, meV, "
                       r"Hartree"):
        dm_for(folder / "qc_units.extxyz", tmp_path, energy_unit="hartree")


@pytest.mark.parametrize("index, rows", [("-5:", [25, 26, 27, 28, 29]), ("-1", [29]), ("::7", [0, 7, 14, 21, 28]),
                                         ("3:-24", [3, 4, 5])])  # fmt: skip
def test_ase_db_negative_and_stepped_index_like_extxyz(tmp_path, index, rows):
    import shutil

    shutil.copy(BAD / "ase-db-negative-index/frames.db", tmp_path / "frames.db")
    from ase.io import read

    db = dm_for(tmp_path / "frames.db", tmp_path, index=index, forces_key=None, num_train=1, num_val=0)
    db.setup()
    every = read(tmp_path / "frames.db", ":")
    assert len(every) == 30 and len(db.store) == len(rows)
    expected = np.concatenate([every[i].positions for i in rows])
    assert np.allclose(db.store.arrays["pos"], expected, atol=1e-5)


def test_ase_db_backwards_index_is_refused(tmp_path):
    db = dm_for(BAD / "ase-db-negative-index/frames.db", tmp_path, index="::-1", forces_key=None)
    with pytest.raises(DataFormatError, match=r"frames.db: index '::-1' reads an ASE database backwards"):
        db.prepare_data()


def test_elements_absent_from_training_are_an_error_for_fit_and_a_warning_for_evaluation(tmp_path):
    folder = BAD / "unseen-elements"
    kw = dict(forces_key=None, split_file=str(folder / "splits.npz"))
    dm = dm_for(folder / "unseen.extxyz", tmp_path, **kw)
    with pytest.raises(ValueError, match=r"elements absent from the training split \(40 structures\): Si \(Z=14\): 4 "
                       r"structures in test; Br \(Z=35\): 4 structures in test\..*--data.allow_unseen_elements true"):
        dm.setup("fit")
    for stage in ("test", "predict"):
        dm = dm_for(folder / "unseen.extxyz", tmp_path, **kw)
        with pytest.warns(UserWarning, match=r"Si \(Z=14\): 4 structures in test; Br \(Z=35\): 4 structures in test"):
            dm.setup(stage)
    dm = dm_for(folder / "unseen.extxyz", tmp_path, allow_unseen_elements=True, **kw)
    with pytest.warns(UserWarning, match=r"Br \(Z=35\)"):
        dm.setup("fit")
    assert dm.element_presence("train")[[1, 6, 7, 8, 14, 35]].tolist()[-2:] == [0, 0]
    assert dm.element_presence("test")[[14, 35]].tolist() == [4, 4]


def test_empty_evaluation_split_is_an_error(tmp_path):
    _, atoms = frames(10)
    write(tmp_path / "md.extxyz", atoms)
    dm = dm_for(tmp_path / "md.extxyz", tmp_path, num_train=0.8, num_val=0.2)
    dm.setup("fit")  # training needs no test split
    with pytest.raises(ValueError, match=r"the test split is empty \(num_train=0.8, num_val=0.2, num_test=None of 10 "
                       r"molecules\).*--data.num_test"):
        dm.setup("test")


def test_integer_targets_list_the_valid_names(tmp_path):
    from atomzoo.datamodules import QM9DataModule

    with pytest.raises(ValueError, match=r"targets are label names, not column numbers \(\[7\] given, PyG-style\); "
                       r"valid names for QM9DataModule: mu, alpha, homo, lumo, gap, r2, zpve, u0,"):
        QM9DataModule(targets=[7])
    with pytest.raises(ValueError, match=r"valid names for ASEFileDataModule: energy, gap"):
        dm_for(tmp_path / "x.extxyz", tmp_path, targets=[0], property_keys=["gap"])


def test_low_data_subset_missing_a_rare_element_only_warns(tmp_path):
    """train_size subsets miss rare elements by design (low-data studies): a warning, not an error,
    as long as the full training split has them."""
    folder = BAD / "unseen-elements"
    splits = dict(np.load(folder / "splits.npz"))
    moved = {"train": np.concatenate([splits["test"], splits["train"]]), "val": splits["val"], "test": splits["test"][:2]}
    np.savez(tmp_path / "s.npz", **moved)  # Si and Br now in the full training split, not in its first 4 rows
    dm = dm_for(folder / "unseen.extxyz", tmp_path, forces_key=None, split_file=str(tmp_path / "s.npz"))
    dm.setup("fit")  # the full training split has every element: silent
    moved["train"] = np.concatenate([splits["train"], splits["test"]])  # rare elements last: cut by train_size
    np.savez(tmp_path / "s.npz", **moved)
    dm = dm_for(folder / "unseen.extxyz", tmp_path, forces_key=None, split_file=str(tmp_path / "s.npz"), train_size=20)
    with pytest.warns(UserWarning, match=r"absent from the training split \(its first train_size=20\) \(20 structures\): "
                      r"Si \(Z=14\): 1 structures in test"):
        dm.setup("fit")
