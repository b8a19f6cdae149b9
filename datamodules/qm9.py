"""QM9 (Ramakrishnan et al., Sci. Data 1, 140022 (2014)): 130,831 small organic molecules (H, C, N, O,
F; at most 29 atoms) with B3LYP/6-31G(2df,p) geometries and properties.

Two sources, same molecules and values:

- default: the ``qm9pack`` wheel from PyPI (``pip install qm9pack``), which ships the data as CSV.
  ``import qm9pack`` is broken on current setuptools, so its files are located through
  ``importlib.metadata`` and never imported.
- ``raw_dir``: a folder with the canonical release files ``gdb9.sdf``, ``gdb9.sdf.csv`` (MoleculeNet)
  and ``uncharacterized.txt`` (figshare 3195404); the 3,054 uncharacterised molecules are dropped.

Labels follow PyTorch Geometric's convention (names, order and units), so numbers compare with the
literature: energies in eV (Hartree x 27.211386246, CODATA 2018).
"""

from __future__ import annotations

import hashlib
import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import numpy as np
from ase.units import create_units

from .base import AtomsDataModule, TargetInfo
from .storage import StoreWriter

HARTREE_EV = create_units("2018")["Hartree"]
ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}

#: name -> (unit, default pooling), in PyG's column order.
LABELS: dict[str, tuple[str, str]] = {
    "mu": ("D", "sum"),
    "alpha": ("a0^3", "sum"),
    "homo": ("eV", "mean"),
    "lumo": ("eV", "mean"),
    "gap": ("eV", "mean"),
    "r2": ("a0^2", "sum"),
    "zpve": ("eV", "sum"),
    "u0": ("eV", "sum"),
    "u": ("eV", "sum"),
    "h": ("eV", "sum"),
    "g": ("eV", "sum"),
    "cv": ("cal/mol/K", "sum"),
    "u0_atom": ("eV", "sum"),
    "u_atom": ("eV", "sum"),
    "h_atom": ("eV", "sum"),
    "g_atom": ("eV", "sum"),
    "A": ("GHz", "mean"),
    "B": ("GHz", "mean"),
    "C": ("GHz", "mean"),
}
LABEL_NAMES = list(LABELS)

#: Isolated-atom reference energies in Hartree (B3LYP/6-31G(2df,p)), from the QM9 release.
ATOM_REFERENCE_HARTREE: dict[str, dict[int, float]] = {
    "u0": {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730},
    "u": {1: -0.498857, 6: -37.845355, 7: -54.582445, 8: -75.063163, 9: -99.717314},
    "h": {1: -0.497912, 6: -37.844411, 7: -54.581501, 8: -75.062219, 9: -99.716370},
    "g": {1: -0.510927, 6: -37.861317, 7: -54.598897, 8: -75.079532, 9: -99.733544},
}

QM9PACK_FILES = [f"qm9pack/data/qm9_part{i}.csv" for i in (1, 2, 3)]
QM9PACK_COLUMNS = {  # qm9pack column -> (label, factor to PyG units)
    "Dipole_debye": ("mu", 1.0),
    "Polarizability_bohr3": ("alpha", 1.0),
    "HOMO_au": ("homo", HARTREE_EV),
    "LUMO_au": ("lumo", HARTREE_EV),
    "HOMO_LUMO_gap_au": ("gap", HARTREE_EV),
    "R2_bohr2": ("r2", 1.0),
    "ZPVE_au": ("zpve", HARTREE_EV),
    "InternalEnergy_0K_au": ("u0", HARTREE_EV),
    "InternalEnergy_298K_au": ("u", HARTREE_EV),
    "Enthalphy_298K_au": ("h", HARTREE_EV),
    "GibbsFreeEnergy_298K_au": ("g", HARTREE_EV),
    "Heatcapacity_Cv_cal_mol_K": ("cv", 1.0),
    "RotA_GHz": ("A", 1.0),
    "RotB_GHz": ("B", 1.0),
    "RotC_GHz": ("C", 1.0),
}
SDF_CSV_COLUMNS = {  # gdb9.sdf.csv column -> (label, factor); energies in Hartree there
    "mu": ("mu", 1.0),
    "alpha": ("alpha", 1.0),
    "homo": ("homo", HARTREE_EV),
    "lumo": ("lumo", HARTREE_EV),
    "gap": ("gap", HARTREE_EV),
    "r2": ("r2", 1.0),
    "zpve": ("zpve", HARTREE_EV),
    "u0": ("u0", HARTREE_EV),
    "u298": ("u", HARTREE_EV),
    "h298": ("h", HARTREE_EV),
    "g298": ("g", HARTREE_EV),
    "cv": ("cv", 1.0),
    "A": ("A", 1.0),
    "B": ("B", 1.0),
    "C": ("C", 1.0),
}
RAW_FILES = ("gdb9.sdf", "gdb9.sdf.csv", "uncharacterized.txt")


def atomref_ev(label: str) -> np.ndarray:
    """``[max_z + 1 = 10]`` reference energy per element in eV for u0/u/h/g (zeros elsewhere)."""
    table = np.zeros(10)
    for z, value in ATOM_REFERENCE_HARTREE[label].items():
        table[z] = value * HARTREE_EV
    return table


def qm9pack_files() -> list[Path]:
    """Paths of the qm9pack CSVs, or an error that says how to install them."""
    try:
        dist = distribution("qm9pack")
    except PackageNotFoundError as err:
        raise FileNotFoundError(
            "QM9 needs the qm9pack package (it ships the dataset as CSV): run `pip install qm9pack`, "
            "or pass --data.raw_dir pointing to gdb9.sdf, gdb9.sdf.csv and uncharacterized.txt"
        ) from err
    paths = [Path(dist.locate_file(f)) for f in QM9PACK_FILES]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"qm9pack is installed but lacks {missing}; reinstall it: pip install --force-reinstall qm9pack")
    return paths


def _add_atomization(labels: dict[str, np.ndarray], z: np.ndarray, counts: np.ndarray) -> None:
    mol = np.repeat(np.arange(counts.size), counts)
    for name in ("u0", "u", "h", "g"):
        ref = np.bincount(mol, weights=atomref_ev(name)[z], minlength=counts.size)
        labels[f"{name}_atom"] = labels[name] - ref


def _labels_matrix(labels: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([labels[name] for name in LABEL_NAMES], axis=1).astype(np.float64)


def read_qm9pack() -> dict[str, np.ndarray]:
    """All molecules of the qm9pack CSVs: ``z``, ``pos`` (A), ``counts``, ``gdb_index``, ``labels``."""
    import pandas as pd

    columns = ["Index", "N_atoms", "Elements", "XYZ_Ang", *QM9PACK_COLUMNS]
    frame = pd.concat([pd.read_csv(p, usecols=columns) for p in qm9pack_files()], ignore_index=True)
    frame = frame.sort_values("Index", kind="stable").reset_index(drop=True)
    counts = frame["N_atoms"].to_numpy(np.int64)
    symbols = re.sub(r"[\[\]' ]", "", ",".join(frame["Elements"])).split(",")
    z = np.array([ELEMENTS[s] for s in symbols], dtype=np.uint8)
    pos = np.array(re.sub(r"[\[\] ]", "", ",".join(frame["XYZ_Ang"])).split(","), dtype=np.float64)
    pos = pos.reshape(-1, 3)
    if z.size != counts.sum() or pos.shape[0] != counts.sum():
        raise ValueError("qm9pack CSVs are inconsistent (atom counts do not match Elements/XYZ_Ang); reinstall qm9pack")
    labels = {label: frame[col].to_numpy(np.float64) * f for col, (label, f) in QM9PACK_COLUMNS.items()}
    _add_atomization(labels, z.astype(np.int64), counts)
    return {
        "z": z,
        "pos": pos.astype(np.float32),
        "counts": counts,
        "gdb_index": frame["Index"].to_numpy(np.int64),
        "labels": _labels_matrix(labels),
    }


def read_uncharacterized(path: Path) -> set[int]:
    """1-based gdb indices listed in ``uncharacterized.txt`` (data rows start with an integer index)."""
    indices = set()
    for line in Path(path).read_text().splitlines():
        tokens = line.split()
        if len(tokens) >= 4 and tokens[0].isdigit():
            indices.add(int(tokens[0]))
    return indices


def read_raw_release(raw_dir: Path) -> dict[str, np.ndarray]:
    """The canonical release files in ``raw_dir``, uncharacterised molecules removed."""
    import pandas as pd
    from rdkit import Chem, RDLogger

    missing = [name for name in RAW_FILES if not (raw_dir / name).exists()]
    if missing:
        raise FileNotFoundError(
            f"--data.raw_dir {raw_dir} lacks {missing}: gdb9.sdf and gdb9.sdf.csv come from MoleculeNet's "
            "gdb9.tar.gz, uncharacterized.txt from figshare (article 3195404); or drop raw_dir to use qm9pack"
        )
    skip = read_uncharacterized(raw_dir / "uncharacterized.txt")
    table = pd.read_csv(raw_dir / "gdb9.sdf.csv")
    gdb = table["mol_id"].str.replace("gdb_", "", regex=False).astype(np.int64).to_numpy()
    RDLogger.DisableLog("rdApp.*")
    supplier = Chem.SDMolSupplier(str(raw_dir / "gdb9.sdf"), removeHs=False, sanitize=False)
    z_list, pos_list, counts, keep_rows = [], [], [], []
    for row, mol in enumerate(supplier):
        if row >= gdb.size:
            raise ValueError(f"{raw_dir / 'gdb9.sdf'} has more molecules than rows in gdb9.sdf.csv")
        if int(gdb[row]) in skip:
            continue
        if mol is None:
            raise ValueError(f"{raw_dir / 'gdb9.sdf'}: record {row + 1} (gdb_{gdb[row]}) cannot be parsed")
        z_list.append([a.GetAtomicNum() for a in mol.GetAtoms()])
        pos_list.append(mol.GetConformer().GetPositions())
        counts.append(mol.GetNumAtoms())
        keep_rows.append(row)
    keep_rows = np.array(keep_rows, dtype=np.int64)
    counts = np.array(counts, dtype=np.int64)
    z = np.concatenate(z_list).astype(np.uint8)
    labels = {label: table[col].to_numpy(np.float64)[keep_rows] * f for col, (label, f) in SDF_CSV_COLUMNS.items()}
    _add_atomization(labels, z.astype(np.int64), counts)
    return {
        "z": z,
        "pos": np.concatenate(pos_list).astype(np.float32),
        "counts": counts,
        "gdb_index": gdb[keep_rows],
        "labels": _labels_matrix(labels),
    }


class QM9DataModule(AtomsDataModule):
    """QM9 with PyG-convention targets; default split 110,000 / 10,000 / rest (10,831).

    Args:
        targets: one or more of mu, alpha, homo, lumo, gap, r2, zpve, u0, u, h, g, cv, u0_atom,
            u_atom, h_atom, g_atom, A, B, C (PyG's units: D, a0^3, eV, a0^2, cal/mol/K, GHz);
            ``None`` for label-free pretraining.
        raw_dir: folder with gdb9.sdf, gdb9.sdf.csv and uncharacterized.txt; ``None`` reads qm9pack.
        num_train, num_val: the standard 110,000 / 10,000 split (test: the remaining 10,831).
        Other arguments (batch size, workers, splits, cache, corruption): see
        :class:`~atomzoo.datamodules.base.AtomsDataModule`; the CLI lists them all.
    """

    name = "qm9"

    def __init__(
        self,
        targets: list[str | int] | str | None = None,
        raw_dir: str | None = None,
        num_train: int | float = 110_000,
        num_val: int | float = 10_000,
        **kwargs,
    ) -> None:
        super().__init__(targets=targets, num_train=num_train, num_val=num_val, **kwargs)
        self.raw_dir = Path(raw_dir).expanduser() if raw_dir else None

    def _source_files(self) -> list[Path]:
        return [self.raw_dir / n for n in RAW_FILES] if self.raw_dir else qm9pack_files()

    def fingerprint(self) -> dict:
        files = self._source_files()
        return {
            "dataset": "qm9",
            "source": "raw" if self.raw_dir else "qm9pack",
            "files": [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in files if p.exists()],
            "labels": LABEL_NAMES,
        }

    def store_path(self) -> Path:
        if self.raw_dir:
            digest = hashlib.sha1(str(self.raw_dir.resolve()).encode()).hexdigest()[:12]
            return self.cache_dir / "qm9" / f"raw-{digest}"
        return self.cache_dir / "qm9" / "qm9pack"

    def build_store(self, path: Path) -> None:
        data = read_raw_release(self.raw_dir) if self.raw_dir else read_qm9pack()
        with StoreWriter(path, self.fingerprint()) as writer:
            writer.append(
                atoms={"z": data["z"], "pos": data["pos"]},
                counts=data["counts"],
                molecules={"labels": data["labels"], "gdb_index": data["gdb_index"]},
            )
            writer.describe(LABEL_NAMES, [LABELS[n][0] for n in LABEL_NAMES], np.unique(data["z"]).tolist())

    def label_names(self) -> list[str]:
        return list(LABEL_NAMES)

    def target_info(self, name: str) -> TargetInfo:
        if name not in LABELS:
            raise ValueError(f"unknown QM9 target {name!r}; valid names: {', '.join(LABEL_NAMES)}")
        unit, pooling = LABELS[name]
        atomref = tuple(atomref_ev(name)) if name in ATOM_REFERENCE_HARTREE else None
        return TargetInfo(name=name, unit=unit, pooling=pooling, atomref=atomref)
