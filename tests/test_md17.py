"""MD17 / rMD17 DataModules on the committed fixture, official splits, units and bad input."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase.units import create_units, kcal, mol

from atomzoo.datamodules import MD17DataModule, RMD17DataModule
from atomzoo.datamodules.checks import DataFormatError

FIXTURE = Path(__file__).parent / "data" / "md17_fixture"


def test_md17_reads_and_converts_units(tmp_path):
    dm = MD17DataModule(root=str(FIXTURE), molecule="ethanol", cache_dir=str(tmp_path), num_train=100, num_val=20)
    dm.setup()
    raw = np.load(FIXTURE / "md17_ethanol.npz")
    store = dm.store
    assert len(store) == raw["R"].shape[0] == 500
    assert store.meta["label_names"] == ["energy"] and store.meta["units"]["forces"] == "eV/A"
    assert store.meta["atomic_numbers"] == [1, 6, 8]
    assert np.allclose(store.arrays["labels"][:, 0], raw["E"][:, 0] * kcal / mol)
    assert np.allclose(store.arrays["forces"][:9], raw["F"][0] * kcal / mol, atol=1e-5)
    assert np.allclose(store.arrays["pos"][9:18], raw["R"][1], atol=1e-6)
    assert {k: v.size for k, v in dm.splits.items()} == {"train": 100, "val": 20, "test": 380}
    batch = next(iter(dm.train_dataloader()))
    assert batch.forces.shape == batch.pos.shape and batch.y.shape == (10, 1)
    assert dm.forces is True and dm.target_info("energy").pooling == "sum"


def test_default_split_is_950_50_rest(tmp_path):
    dm = RMD17DataModule(root=str(FIXTURE), molecule="ethanol", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="exceed"):
        dm.setup()  # 500 frames < 950 + 50: the error names the options


def test_kcal_units_kept(tmp_path):
    dm = RMD17DataModule(root=str(FIXTURE), molecule="ethanol", cache_dir=str(tmp_path), units="kcal/mol",
                         num_train=10, num_val=10)  # fmt: skip
    dm.setup()
    raw = np.load(FIXTURE / "rmd17" / "npz_data" / "rmd17_ethanol.npz")
    assert np.allclose(dm.store.arrays["labels"][:, 0], raw["energies"])
    assert dm.store.meta["units"]["energy"] == "kcal/mol" and dm.force_unit == "kcal/mol/A"


def test_rmd17_official_split(tmp_path):
    dm = RMD17DataModule(root=str(FIXTURE), molecule="ethanol", cache_dir=str(tmp_path), official_split=1, num_val=50)
    dm.setup()
    train = np.loadtxt(FIXTURE / "rmd17" / "splits" / "index_train_01.csv", dtype=int)
    test = np.loadtxt(FIXTURE / "rmd17" / "splits" / "index_test_01.csv", dtype=int)
    s = dm.splits
    assert np.array_equal(s["test"], test)
    assert s["val"].size == 50 and s["train"].size == train.size - 50
    assert set(s["train"]) | set(s["val"]) == set(train) and not set(s["train"]) & set(s["val"])
    # root may also be the rmd17 folder itself
    dm2 = RMD17DataModule(root=str(FIXTURE / "rmd17"), molecule="ethanol", cache_dir=str(tmp_path), official_split=1)
    dm2.setup()
    assert np.array_equal(dm2.splits["test"], test)


def test_official_split_index_out_of_range(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(FIXTURE / "rmd17", root / "rmd17")
    (root / "rmd17" / "splits" / "index_test_02.csv").write_text("1\n2\n100000\n")
    (root / "rmd17" / "splits" / "index_train_02.csv").write_text("3\n4\n5\n")
    dm = RMD17DataModule(root=str(root), molecule="ethanol", cache_dir=str(tmp_path / "c"), official_split=2, num_val=1)
    with pytest.raises(ValueError, match=r"index_test_02.csv: index 100000 is out of range"):
        dm.setup()


def test_missing_file_names_path_and_source(tmp_path):
    dm = RMD17DataModule(root=str(tmp_path), molecule="aspirin", cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match=r"rmd17/npz_data/rmd17_aspirin.npz.*figshare"):
        dm.prepare_data()
    dm = MD17DataModule(root=str(tmp_path), molecule="paracetamol", cache_dir=str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError, match=r"paracetamol_dft.npz.*quantum-machine.org"):
        dm.prepare_data()
    with pytest.raises(ValueError, match="unknown MD17 molecule"):
        MD17DataModule(root=str(tmp_path), molecule="caffeine").prepare_data()


def _write_md17(root: Path, **overrides):
    raw = dict(np.load(FIXTURE / "md17_ethanol.npz"))
    raw.update(overrides)
    for k in [k for k, v in overrides.items() if v is None]:
        raw.pop(k)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "md17_ethanol.npz", **raw)
    return raw


def _bad(tmp_path, match, **overrides):
    root = tmp_path / "raw"
    _write_md17(root, **overrides)
    cache = tmp_path / "cache"
    dm = MD17DataModule(root=str(root), molecule="ethanol", cache_dir=str(cache), num_train=10, num_val=10)
    with pytest.raises(DataFormatError, match=match):
        dm.prepare_data()
    leftovers = list(cache.rglob("meta.json")) + [p for p in cache.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []  # no partial or stale store


def test_truncated_and_non_npz(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    data = (FIXTURE / "md17_ethanol.npz").read_bytes()
    (root / "md17_ethanol.npz").write_bytes(data[: len(data) // 2])
    dm = MD17DataModule(root=str(root), molecule="ethanol", cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataFormatError, match=r"md17_ethanol.npz is not a readable .npz"):
        dm.prepare_data()
    (root / "md17_ethanol.npz").write_text("R,z,E,F\n1,2,3,4\n")
    with pytest.raises(DataFormatError, match="not a readable"):
        dm.prepare_data()
    assert not list((tmp_path / "c").rglob("meta.json"))


def test_missing_keys(tmp_path):
    _bad(tmp_path, r"lacks key\(s\) \['F'\]", F=None)


def test_mismatched_shapes(tmp_path):
    raw = np.load(FIXTURE / "md17_ethanol.npz")
    _bad(tmp_path, "forces have shape", F=raw["F"][:, :8])


def test_nan_positions_and_labels(tmp_path):
    raw = np.load(FIXTURE / "md17_ethanol.npz")
    R = raw["R"].copy()
    R[7, 2, 1] = np.nan
    _bad(tmp_path, "positions of record 7 is NaN", R=R)
    E = raw["E"].copy()
    E[11] = np.inf
    _bad(tmp_path / "e", "energy of record 11 is NaN or infinite", E=E)


def test_atomic_numbers_out_of_range_and_empty(tmp_path):
    raw = np.load(FIXTURE / "md17_ethanol.npz")
    z = raw["z"].astype(np.int64)
    z[4] = 0
    _bad(tmp_path, r"atomic number 0 outside 1..100", z=z)
    _bad(tmp_path / "e", "non-empty", z=np.zeros(0, np.int64), R=raw["R"][:, :0], F=raw["F"][:, :0])


def test_rmd17_converts_kcal_per_mol_to_ev(tmp_path):
    """rMD17 stores kcal/mol and kcal/mol/A (Christensen & von Lilienfeld 2020); the store holds eV and
    eV/A by ASE's constants (kcal/mol = 0.0433641 eV), the same factor as MD17 and recorded in meta."""
    dm = RMD17DataModule(root=str(FIXTURE), molecule="ethanol", cache_dir=str(tmp_path), num_train=100, num_val=20)
    dm.setup()
    raw = np.load(FIXTURE / "rmd17" / "npz_data" / "rmd17_ethanol.npz")
    store = dm.store
    assert store.meta["units"]["energy"] == "eV" and store.meta["units"]["forces"] == "eV/A"
    codata = create_units("2018")  # the store's constants (ASE's current default CODATA set differs by 1e-8)
    factor = codata["kcal"] / codata["mol"]
    assert abs(factor - 0.0433641) < 1e-6
    assert np.allclose(store.arrays["labels"][:, 0], raw["energies"] * factor, rtol=1e-12, atol=0)
    assert np.allclose(store.arrays["forces"][:9], raw["forces"][0] * factor, atol=1e-5)
    assert np.allclose(store.arrays["pos"][9:18], raw["coords"][1], atol=1e-6)
