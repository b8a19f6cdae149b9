"""PCQM4Mv2 3D loader on small files in the exact OGB layout, generated here with RDKit from QM9 SMILES."""

import logging
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from atomzoo.datamodules import PCQM4Mv2DataModule
from atomzoo.datamodules.checks import DataFormatError

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
