"""QM9 DataModule on the real qm9pack data, the canonical-release path, splits and bad input."""

from importlib.metadata import PackageNotFoundError
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from atomzoo.datamodules import QM9DataModule
from atomzoo.datamodules import qm9 as qm9_module
from atomzoo.datamodules.qm9 import HARTREE_EV, LABEL_NAMES, qm9pack_files


def test_all_molecules_and_labels(qm9):
    store = qm9.store
    assert len(store) == 130_831
    assert store.meta["label_names"] == LABEL_NAMES and len(LABEL_NAMES) == 19
    assert store.meta["atomic_numbers"] == [1, 6, 7, 8, 9]
    assert store.counts.max() == 29
    # molecule 0 is methane (gdb 1): check against the raw CSV values in PyG units
    methane = store.arrays["labels"][0]
    names = {n: methane[i] for i, n in enumerate(LABEL_NAMES)}
    assert names["homo"] == pytest.approx(-0.3877 * HARTREE_EV)
    assert names["u0"] == pytest.approx(-40.47893 * HARTREE_EV)
    refs = qm9_module.ATOM_REFERENCE_HARTREE["u0"]
    assert names["u0_atom"] == pytest.approx((-40.47893 - refs[6] - 4 * refs[1]) * HARTREE_EV)
    assert names["A"] == pytest.approx(157.7118) and names["cv"] == pytest.approx(6.469)
    assert store.arrays["z"][:5].tolist() == [6, 1, 1, 1, 1]
    assert np.allclose(store.arrays["pos"][0], [-0.0126981359, 1.0858041578, 0.0080009958])


def test_batches_carry_selected_targets(qm9):
    batch = next(iter(qm9.train_dataloader()))
    assert batch.y.shape == (32, 2) and batch.y.dtype.is_floating_point
    m = int(batch.idx[0])
    expected = qm9.store.arrays["labels"][m, [LABEL_NAMES.index("homo"), LABEL_NAMES.index("u0")]]
    assert np.allclose(batch.y[0].numpy(), expected)
    assert batch.pos.shape[1] == 3 and batch.z.dtype.is_floating_point is False


def test_standard_split(qm9):
    s = qm9.splits
    assert (s["train"].size, s["val"].size, s["test"].size) == (110_000, 10_000, 10_831)
    assert len(set(s["train"]) | set(s["val"]) | set(s["test"])) == 130_831
    again = QM9DataModule(targets=["homo"], cache_dir=str(qm9.cache_dir))
    again.setup()
    assert all(np.array_equal(again.splits[k], s[k]) for k in s)


def test_low_data_subset_is_a_prefix(qm9):
    small = QM9DataModule(targets=["homo"], cache_dir=str(qm9.cache_dir), train_size=1000)
    small.setup()
    assert np.array_equal(small.splits["train"], qm9.splits["train"][:1000])
    assert np.array_equal(small.splits["test"], qm9.splits["test"])


def test_split_file_roundtrip(qm9, tmp_path):
    from atomzoo.datamodules.splits import save_splits

    custom = {"train": np.arange(10), "val": np.arange(10, 15), "test": np.arange(15, 20)}
    save_splits(tmp_path / "s.npz", custom)
    dm = QM9DataModule(targets=["homo"], cache_dir=str(qm9.cache_dir), split_file=str(tmp_path / "s.npz"))
    dm.setup()
    assert dm.splits["val"].tolist() == list(range(10, 15))
    save_splits(tmp_path / "bad.npz", {"train": np.array([10**7]), "val": np.arange(2), "test": np.arange(2)})
    with pytest.raises(ValueError, match="10000000"):
        QM9DataModule(cache_dir=str(qm9.cache_dir), split_file=str(tmp_path / "bad.npz")).setup()


def test_unknown_target_lists_valid_names(qm9):
    dm = QM9DataModule(targets=["homo", "enthalpy"], cache_dir=str(qm9.cache_dir))
    with pytest.raises(ValueError, match=r"enthalpy.*valid names: mu, alpha, homo"):
        dm.setup()


def test_split_larger_than_dataset(qm9):
    with pytest.raises(ValueError, match="exceed the 130831 molecules"):
        QM9DataModule(cache_dir=str(qm9.cache_dir), num_train=125_000, num_val=10_000).setup()
    with pytest.raises(ValueError, match="train_size"):
        QM9DataModule(cache_dir=str(qm9.cache_dir), train_size=200_000).setup()


def test_missing_qm9pack_says_how_to_install(monkeypatch):
    def missing(name):
        raise PackageNotFoundError(name)

    monkeypatch.setattr(qm9_module, "distribution", missing)
    with pytest.raises(FileNotFoundError, match="pip install qm9pack"):
        qm9pack_files()


def test_stale_cache_is_rebuilt(qm9, tmp_path, monkeypatch):
    """A corrupt store is rebuilt from the sources, and never used half-written."""
    import shutil

    dm = QM9DataModule(cache_dir=str(tmp_path))
    shutil.copytree(qm9.store_path(), dm.store_path())
    (dm.store_path() / "pos.bin").write_bytes(b"truncated")
    built = []
    original = QM9DataModule.build_store
    monkeypatch.setattr(QM9DataModule, "build_store", lambda self, p: (built.append(p), original(self, p)))
    dm.setup()
    assert built == [dm.store_path()]
    assert np.array_equal(np.asarray(dm.store.arrays["pos"]), np.asarray(qm9.store.arrays["pos"]))


# ----- the canonical release files ------------------------------------------------------------
SDF_CSV_ORDER = ["mol_id", "A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "u0", "u298",
                 "h298", "g298", "cv", "u0_atom", "u298_atom", "h298_atom", "g298_atom"]
SYMBOLS = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F"}


def write_release(raw_dir, rows: pd.DataFrame, extra_uncharacterized_id: int):
    """Write gdb9.sdf / gdb9.sdf.csv / uncharacterized.txt for ``rows`` of a qm9pack CSV, plus one
    uncharacterised molecule that must be dropped."""
    import ast

    raw_dir.mkdir()
    sdf, csv_rows = [], []
    records = [SimpleNamespace(**r) for r in rows.to_dict("records")]  # (itertuples would shadow "Index")
    entries = [(int(r.Index), ast.literal_eval(r.Elements), ast.literal_eval(r.XYZ_Ang), r) for r in records]
    bogus = entries[0][3]
    entries.append((extra_uncharacterized_id, ["C", "H"], [[0.0, 0.0, 0.0], [1.1, 0.0, 0.0]], bogus))
    entries.sort(key=lambda e: e[0])
    for gdb, elements, xyz, r in entries:
        lines = [f"gdb_{gdb}", "     RDKit          3D", "", f"{len(elements):3d}  0  0  0  0  0  0  0  0  0999 V2000"]
        lines += [f"{x:10.4f}{y:10.4f}{z:10.4f} {s:<3} 0  0  0  0  0  0  0  0  0  0  0  0" for s, (x, y, z) in zip(elements, xyz)]
        sdf += lines + ["M  END", "$$$$"]
        csv_rows.append([f"gdb_{gdb}", r.RotA_GHz, r.RotB_GHz, r.RotC_GHz, r.Dipole_debye, r.Polarizability_bohr3,
                         r.HOMO_au, r.LUMO_au, r.HOMO_LUMO_gap_au, r.R2_bohr2, r.ZPVE_au, r.InternalEnergy_0K_au,
                         r.InternalEnergy_298K_au, r.Enthalphy_298K_au, r.GibbsFreeEnergy_298K_au,
                         r.Heatcapacity_Cv_cal_mol_K, 0.0, 0.0, 0.0, 0.0])
    (raw_dir / "gdb9.sdf").write_text("\n".join(sdf) + "\n")
    pd.DataFrame(csv_rows, columns=SDF_CSV_ORDER).to_csv(raw_dir / "gdb9.sdf.csv", index=False)
    header = ["  Structures of the following molecules failed the consistency check"] + ["  ..."] * 7 + ["  -----"]
    body = [f"  {extra_uncharacterized_id:6d}  C2H6  CC  CC   0.1   0.2"]
    (raw_dir / "uncharacterized.txt").write_text("\n".join(header + body + ["  -----", ""]))


def test_canonical_release_matches_qm9pack(qm9, tmp_path):
    pytest.importorskip("rdkit")
    rows = pd.read_csv(qm9pack_files()[0], nrows=25)
    write_release(tmp_path / "raw", rows, extra_uncharacterized_id=21725)
    dm = QM9DataModule(targets=list(LABEL_NAMES), raw_dir=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"),
                       num_train=20, num_val=3)
    dm.setup()
    store = dm.store
    assert len(store) == 25  # the uncharacterised molecule is dropped
    assert store.arrays["gdb_index"].tolist() == rows["Index"].tolist()
    ref = qm9.store
    assert np.array_equal(np.asarray(store.arrays["z"]), np.asarray(ref.arrays["z"][: store.offsets[-1]]))
    assert np.allclose(store.arrays["pos"], ref.arrays["pos"][: store.offsets[-1]], atol=6e-5)
    assert np.allclose(store.arrays["labels"], ref.arrays["labels"][:25], rtol=1e-12, atol=1e-9)


def test_canonical_release_missing_files_named(tmp_path):
    (tmp_path / "raw").mkdir()
    dm = QM9DataModule(raw_dir=str(tmp_path / "raw"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match="gdb9.sdf.*MoleculeNet"):
        dm.setup()
    assert not (tmp_path / "cache" / "qm9").exists() or not any((tmp_path / "cache" / "qm9").iterdir())
