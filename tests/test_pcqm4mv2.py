"""PCQM4Mv2 3D loader on small files in the exact OGB layout, generated here with RDKit from QM9 SMILES."""

import io
import logging
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from atomzoo.datamodules import PCQM4Mv2DataModule
from atomzoo.datamodules import pcqm4mv2 as pcqm
from atomzoo.datamodules.checks import DataFormatError
from atomzoo.datamodules.storage import Store

N_TRAIN, N_VALID, N_TEST = 24, 4, 4


@pytest.fixture(scope="module")
def ogb_root(tmp_path_factory):
    """root/pcqm4m-v2/{raw/data.csv.gz, split_dict.pt}, root/pcqm4m-v2-train.sdf (heavy atoms, train
    order), root/pcqm4m-v2_xyz.zip and root/pcqm4m-v2_xyz/ (with H, per-molecule <i>.xyz in sub-folders)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    root = tmp_path_factory.mktemp("ogb")
    csv = Path(distribution("qm9pack").locate_file("qm9pack/data/qm9_part1.csv"))
    smiles = pd.read_csv(csv, usecols=["SMILES"], nrows=200)["SMILES"].tolist()
    mols = []
    for smi in smiles:
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        if mol.GetNumHeavyAtoms() >= 3 and AllChem.EmbedMolecule(mol, randomSeed=1) == 0:
            mols.append((smi, mol))
        if len(mols) == N_TRAIN + N_VALID + N_TEST:
            break
    n = len(mols)
    rng = np.random.default_rng(0)
    perm = rng.permutation(n)  # dataset idx order is not the split order
    train, valid, test = np.sort(perm[:N_TRAIN]), perm[N_TRAIN : N_TRAIN + N_VALID], perm[N_TRAIN + N_VALID :]
    gaps = rng.uniform(3, 10, n)
    gaps[perm[N_TRAIN + N_VALID :]] = np.nan  # test rows have no labels
    (root / "pcqm4m-v2" / "raw").mkdir(parents=True)
    frame = pd.DataFrame({"idx": np.arange(n), "smiles": [s for s, _ in mols], "homolumogap": gaps})
    frame.to_csv(root / "pcqm4m-v2" / "raw" / "data.csv.gz", index=False, compression="gzip")
    split = {"train": torch.from_numpy(train), "valid": torch.from_numpy(valid),
             "test-dev": torch.from_numpy(test[:2]), "test-challenge": torch.from_numpy(test[2:])}  # fmt: skip
    torch.save(split, root / "pcqm4m-v2" / "split_dict.pt")
    with Chem.SDWriter(str(root / "pcqm4m-v2-train.sdf")) as w:
        for i in train:
            w.write(Chem.RemoveHs(mols[i][1]))
    with zipfile.ZipFile(root / "pcqm4m-v2_xyz.zip", "w") as zf:
        for i in train:
            mol = mols[i][1]
            atoms = sorted(mol.GetAtoms(), key=lambda a: a.GetSymbol())  # alphabetical, like the release
            pos = mol.GetConformer().GetPositions()
            text = f"{len(atoms)}\n\n" + "".join(
                f"{a.GetSymbol()} {pos[a.GetIdx()][0]:.6f} {pos[a.GetIdx()][1]:.6f} {pos[a.GetIdx()][2]:.6f}\n" for a in atoms
            )
            name = f"pcqm4m-v2_xyz/{i // 10:04d}/{i}.xyz"
            zf.writestr(name, text)
            (root / Path(name)).parent.mkdir(parents=True, exist_ok=True)
            (root / Path(name)).write_text(text)
    return {"root": root, "mols": mols, "train": train, "gaps": gaps}


def make(ogb_root, tmp_path, **kw):
    args = dict(root=str(ogb_root["root"]), cache_dir=str(tmp_path), num_train=20, num_val=4, batch_size=4)
    args.update(kw)
    return PCQM4Mv2DataModule(**args)


def test_sdf_label_free_heavy_atoms(ogb_root, tmp_path):
    dm = make(ogb_root, tmp_path)
    dm.setup()
    store, train = dm.store, ogb_root["train"]
    assert len(store) == train.size and dm.targets is None
    assert np.array_equal(store.arrays["idx_in_dataset"], train)
    first = ogb_root["mols"][train[0]][1]
    assert store.counts[0] == first.GetNumHeavyAtoms() and 1 not in store.meta["atomic_numbers"]
    batch = next(iter(dm.train_dataloader()))
    assert not hasattr(batch, "y") or batch.y is None


def test_sdf_labelled_with_hydrogens(ogb_root, tmp_path):
    dm = make(ogb_root, tmp_path, targets=["homolumogap"], add_hydrogens=True)
    dm.setup()
    train = ogb_root["train"]
    assert np.allclose(dm.store.arrays["labels"][:, 0], ogb_root["gaps"][train])
    assert dm.store.counts[0] == ogb_root["mols"][train[0]][1].GetNumAtoms() and 1 in dm.store.meta["atomic_numbers"]
    assert dm.target_info("homolumogap").pooling == "mean"
    assert next(iter(dm.train_dataloader())).y.shape == (4, 1)


@pytest.mark.parametrize("source", ["zip", "folder"])
def test_xyz_zip_and_folder(ogb_root, tmp_path, source):
    root = ogb_root["root"]
    xyz = root / "pcqm4m-v2_xyz.zip" if source == "zip" else root / "pcqm4m-v2_xyz"
    dm = make(ogb_root, tmp_path, structures="xyz", xyz_path=str(xyz), targets=["homolumogap"])
    dm.setup()
    train = ogb_root["train"]
    assert np.array_equal(dm.store.arrays["idx_in_dataset"], train)
    mol = ogb_root["mols"][train[3]][1]
    assert dm.store.counts[3] == mol.GetNumAtoms()
    a, b = dm.store.offsets[3], dm.store.offsets[4]
    assert sorted(dm.store.arrays["z"][a:b].tolist()) == sorted(x.GetAtomicNum() for x in mol.GetAtoms())
    assert np.allclose(dm.store.arrays["labels"][:, 0], ogb_root["gaps"][train])


def _corrupt_sdf(src: Path, dst: Path, record: int) -> None:
    blocks = src.read_text().split("$$$$\n")
    lines = blocks[record].splitlines()
    lines[3] = "  x  y  0  0  0  0  0  0  0  0999 V2000"  # garbage counts line
    blocks[record] = "\n".join(lines) + "\n"
    dst.write_text("$$$$\n".join(blocks))


def test_bad_sdf_record_skip_and_error(ogb_root, tmp_path, caplog):
    bad_sdf = tmp_path / "bad.sdf"
    _corrupt_sdf(ogb_root["root"] / "pcqm4m-v2-train.sdf", bad_sdf, 5)
    dm = make(ogb_root, tmp_path / "c1", sdf_path=str(bad_sdf), num_train=18)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert len(dm.store) == ogb_root["train"].size - 1
    assert dm.store.meta["num_skipped"] == 1 and dm.store.meta["skipped_records"] == [5]
    assert "skipped 1 of" in caplog.text and "(first: 5:" in caplog.text
    assert 5 not in [list(ogb_root["train"]).index(i) for i in dm.store.arrays["idx_in_dataset"]]
    dm = make(ogb_root, tmp_path / "c2", sdf_path=str(bad_sdf), on_bad_record="error")
    with pytest.raises(DataFormatError, match=r"bad.sdf: record 5 \(0-based\) is unusable"):
        dm.prepare_data()
    assert not list((tmp_path / "c2").rglob("meta.json"))


def test_missing_files_and_unsafe_split_dict(ogb_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pcqm4m-v2-train.sdf.*ogb.stanford.edu"):
        PCQM4Mv2DataModule(root=str(tmp_path), cache_dir=str(tmp_path / "c")).prepare_data()
    root = tmp_path / "r"
    (root / "pcqm4m-v2" / "raw").mkdir(parents=True)
    (root / "pcqm4m-v2-train.sdf").write_bytes((ogb_root["root"] / "pcqm4m-v2-train.sdf").read_bytes())
    dm = PCQM4Mv2DataModule(root=str(root), cache_dir=str(tmp_path / "c"), targets=["homolumogap"])
    with pytest.raises(FileNotFoundError, match=r"pcqm4m-v2/raw/data.csv.gz"):
        dm.prepare_data()
    (root / "pcqm4m-v2" / "raw" / "data.csv.gz").write_bytes((ogb_root["root"] / "pcqm4m-v2" / "raw" / "data.csv.gz").read_bytes())

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"train": Evil()}, root / "pcqm4m-v2" / "split_dict.pt")
    with pytest.raises(DataFormatError, match="weights_only"):
        dm.prepare_data()
    assert not list((tmp_path / "c").rglob("meta.json"))


def test_bad_xyz_record_and_nan(ogb_root, tmp_path):
    folder = tmp_path / "xyz" / "0000"
    folder.mkdir(parents=True)
    (folder / "0.xyz").write_text("2\n\nC 0 0 0\nO 0 0 1.2\n")
    (folder / "1.xyz").write_text("2\n\nC 0 0 0\nO nan 0 1.2\n")
    (folder / "2.xyz").write_text("3\n\nC 0 0 0\n")
    (folder / "3.xyz").write_text("0\n\n")
    dm = make(ogb_root, tmp_path / "c", structures="xyz", xyz_path=str(tmp_path / "xyz"), num_train=1, num_val=0)
    dm.setup()
    assert len(dm.store) == 1 and dm.store.meta["skipped_records"] == [1, 2, 3]
    dm = make(ogb_root, tmp_path / "c2", structures="xyz", xyz_path=str(tmp_path / "xyz"), on_bad_record="error")
    with pytest.raises(DataFormatError, match="record 1 .*NaN"):
        dm.prepare_data()


# ----- the numpy SDF parser gives what RDKit gives ----------------------------------------------------
def _variant_sdf(src: Path, dst: Path) -> set[int]:
    """The fixture's SDF with records edited in ways RDKit reads (or rejects) differently; returns the
    records the numpy parser should read itself (the others go to RDKit). Ends with a stray empty line,
    which RDKit reads as one more, unparsable, record."""
    blocks = src.read_text().split("$$$$\n")[:-1]
    edits = {
        1: lambda ls: ls[:-1] + ["M  CHG  1   1   1", ls[-1]],  # charge line (numpy)
        2: lambda ls: ls + [">  <homolumogap>  (1) ", "3.1", ""],  # data section (numpy)
        3: lambda ls: ls[:4] + ["       nan" + ls[4][10:]] + ls[5:],  # RDKit rejects the coordinate
        4: lambda ls: ls[:4] + [ls[4][:31] + "D  " + ls[4][34:]] + ls[5:],  # deuterium: RDKit, Z = 1
        5: lambda ls: ls[:3] + ["  x  y  0  0  0  0  0  0  0  0999 V2000"] + ls[4:],  # garbage counts line
        6: lambda ls: ls[:4] + [ls[4][:31] + "Md " + ls[4][34:]] + ls[5:],  # Z = 101 (numpy), left out by the Z check
        8: lambda ls: ls[:4] + [ls[4][:34] + " 1" + ls[4][36:]] + ls[5:],  # mass difference: RDKit
        9: lambda ls: ls[:4] + [f"{float(ls[4][:10]) + 1e-5:10.5f}" + ls[4][10:]] + ls[5:],  # 5 decimals: RDKit
        10: lambda ls: ls[:4] + ["   -0.0000    0.0000   -0.0000" + ls[4][30:]] + ls[5:],  # signed zeros (numpy)
        11: lambda ls: ls[:-1] + ["M  ISO  1   1  13", ls[-1]],  # isotope line: RDKit
        12: lambda ls: ls[:3] + [ls[3][:12] + "  1" + ls[3][15:]] + ls[4:],  # chiral flag (numpy)
    }
    numpy_read = set(range(len(blocks))) - {3, 4, 5, 7, 8, 9, 11}
    for k, edit in edits.items():
        blocks[k] = "\n".join(edit(blocks[k].splitlines())) + "\n"
    lines = blocks[7].splitlines()
    n_atoms = int(lines[3][:3])
    lines[4 + n_atoms] += "  0  0  0"  # 21-column bond line: RDKit
    blocks[7] = "\n".join(lines) + "\n"
    dst.write_text("".join(b + "$$$$\n" for b in blocks) + "\n")
    return numpy_read


def _reference(sdf: Path, train: np.ndarray, gaps: np.ndarray, add_hydrogens: bool, labelled: bool) -> dict:
    """What the loader stored before the numpy parser (RDKit's ForwardSDMolSupplier over the whole file,
    the same checks), as plain arrays."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    z_all, pos_all, counts, idxs, labels, skipped, reasons = [], [], [], [], [], [], []
    with open(sdf, "rb") as handle:
        for record, mol in enumerate(Chem.ForwardSDMolSupplier(handle, removeHs=False, sanitize=add_hydrogens)):
            reason = None
            if mol is None:
                reason = "RDKit cannot parse it"
            else:
                if add_hydrogens:
                    mol = Chem.AddHs(mol, addCoords=True)
                z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int64)
                pos = mol.GetConformer().GetPositions()
                idx = int(train[record]) if record < train.size else record
                if z.min() < 1 or z.max() > 100:
                    reason = f"atomic number {int(z[(z < 1) | (z > 100)][0])} outside 1..100"
                elif labelled and not np.isfinite(gaps[idx]):
                    reason = f"no finite homolumogap for idx {idx}"
            if reason is not None:
                skipped.append(record)
                reasons.append(f"{record}: {reason}")
                continue
            z_all.append(z)
            pos_all.append(pos)
            counts.append(z.size)
            idxs.append(idx)
            labels.append(gaps[idx])
    return {"z": np.concatenate(z_all).astype(np.uint8), "pos": np.concatenate(pos_all).astype(np.float32),
            "offsets": np.concatenate([[0], np.cumsum(counts)]), "idx_in_dataset": np.array(idxs, np.int64),
            "labels": np.array(labels, np.float64)[:, None], "skipped": skipped, "reasons": reasons[:5],
            "num_records": record + 1}  # fmt: skip


@pytest.mark.parametrize("read_bytes", [None, 700])
@pytest.mark.parametrize("add_hydrogens", [False, True])
def test_sdf_store_equals_rdkit_reference(ogb_root, tmp_path, monkeypatch, add_hydrogens, read_bytes):
    """Store built by the numpy parser (plus RDKit for odd records) == the store RDKit alone gave:
    atomic numbers, float32 positions (bit for bit, signed zeros included), offsets, dataset idx,
    labels, skipped records and reasons. ``read_bytes=700`` reads less than a record at a time."""
    if read_bytes:
        monkeypatch.setattr(pcqm, "SDF_READ_BYTES", read_bytes)
    sdf = tmp_path / "variants.sdf"
    numpy_read = _variant_sdf(ogb_root["root"] / "pcqm4m-v2-train.sdf", sdf)
    train, gaps = ogb_root["train"], ogb_root["gaps"]
    labelled = add_hydrogens
    dm = make(ogb_root, tmp_path / "c", sdf_path=str(sdf), add_hydrogens=add_hydrogens,
              targets=["homolumogap"] if labelled else None, num_train=10, num_val=2)  # fmt: skip
    dm.prepare_data()
    store = Store(dm.store_path())
    ref = _reference(sdf, train, gaps, add_hydrogens, labelled)
    assert ref["num_records"] == train.size + 1 and ref["skipped"][-1] == train.size  # the stray last line
    for name in ("z", "pos", "idx_in_dataset", "labels"):
        assert store.arrays[name].dtype == ref[name].dtype, name
        assert np.asarray(store.arrays[name]).tobytes() == ref[name].tobytes(), name
    assert np.array_equal(store.offsets, ref["offsets"])
    assert store.meta["skipped_records"] == ref["skipped"]
    if not add_hydrogens:  # nan coordinate, garbage counts line, Z = 101, the stray last line
        assert ref["skipped"] == [3, 5, 6, train.size]
    assert [r.split(" in ")[0] for r in store.meta["skip_reasons"]] == ref["reasons"]
    assert store.meta["num_records"] == ref["num_records"]
    assert dm.num_parsed_by_numpy == store.meta["num_parsed_by_numpy"] == (0 if add_hydrogens else len(numpy_read))
    dm = make(ogb_root, tmp_path / "e", sdf_path=str(sdf), on_bad_record="error", add_hydrogens=add_hydrogens)
    with pytest.raises(DataFormatError, match=r"variants.sdf: record 3 \(0-based\) is unusable: RDKit cannot parse it"):
        dm.prepare_data()
    assert not list((tmp_path / "e").rglob("meta.json"))


def test_sdf_records_end_at_dollar_lines(ogb_root, tmp_path):
    """A record emptied to nothing (two "$$$$" lines in a row) is one unusable record, and every later
    record keeps its place in split_dict's train order. (RDKit's supplier, reading the whole file, took
    the next record's lines as the empty one's and so paired each later structure with the previous
    train molecule's idx and label; records are now cut at "$$$$" lines before parsing.)"""
    from rdkit import Chem

    blocks = (ogb_root["root"] / "pcqm4m-v2-train.sdf").read_text().split("$$$$\n")[:-1]
    sdf = tmp_path / "empty_record.sdf"
    sdf.write_text("".join(b + "$$$$\n" for b in blocks[:3] + [""] + blocks[4:]))
    dm = make(ogb_root, tmp_path / "c", sdf_path=str(sdf), num_train=10, num_val=2)
    dm.setup()
    train = ogb_root["train"]
    assert dm.store.meta["skipped_records"] == [3] and dm.store.meta["num_records"] == train.size
    assert np.array_equal(dm.store.arrays["idx_in_dataset"], np.delete(train, 3))
    for row, idx in enumerate(dm.store.arrays["idx_in_dataset"]):  # each structure is its idx's molecule
        mol = Chem.RemoveHs(ogb_root["mols"][idx][1])
        a, b = dm.store.offsets[row], dm.store.offsets[row + 1]
        assert dm.store.arrays["z"][a:b].tolist() == [x.GetAtomicNum() for x in mol.GetAtoms()]
        assert np.allclose(dm.store.arrays["pos"][a:b], mol.GetConformer().GetPositions(), atol=1e-4)


def test_element_symbols_read_like_rdkit():
    """The numpy parser's symbol table gives RDKit's atomic number for every element symbol, and has no
    entry for what RDKit reads otherwise (D, T, query atoms, upper-case two-letter symbols)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    from ase.data import chemical_symbols

    block = "\n     RDKit          3D\n\n  1  0  0  0  0  0  0  0  0  0999 V2000\n" \
            "    0.0000    0.0000    0.0000 {:<3} 0  0  0  0  0  0  0  0  0  0  0  0\nM  END\n$$$$\n"  # fmt: skip
    for z in range(1, 119):
        symbol = chemical_symbols[z]
        (mol,) = Chem.ForwardSDMolSupplier(io.BytesIO(block.format(symbol).encode()), removeHs=False, sanitize=False)
        key = (ord(symbol[0]), ord(symbol[1]) if len(symbol) > 1 else 32)
        assert mol.GetAtomWithIdx(0).GetAtomicNum() == z == pcqm._SYMBOLS[key], symbol
    for symbol in ["D", "T", "R", "A", "Q", "L", "X", "M", "G", "CL", "AH", "LP"]:
        key = (ord(symbol[0]), ord(symbol[1]) if len(symbol) > 1 else 32)
        assert pcqm._SYMBOLS[key] == -1, symbol
    # and the whole chunk parser on that one-atom record: numpy-read, same as RDKit
    text = block.format("Cl").encode()
    chunk = pcqm.parse_sdf_chunk(text, len(text), 0, add_hydrogens=False)
    assert chunk.fast == 1 and chunk.z.tolist() == [17] and chunk.pos.tolist() == [[0.0, 0.0, 0.0]]
