"""PCQM4Mv2 (OGB-LSC) with 3D structures: the training split's DFT geometries, labelled or label-free.

Files (nothing is downloaded; OGB's own loader is not used -- it calls ``input()`` on an existing
folder without ``RELEASE_v1.txt``, which would hang offline/CI runs; this module never prompts):

- ``<root>/pcqm4m-v2/raw/data.csv.gz``: columns ``idx, smiles, homolumogap`` (eV; NaN for the
  test-dev / test-challenge rows), from https://dgl-data.s3-accelerate.amazonaws.com/dataset/OGB-LSC/pcqm4m-v2.zip
- ``<root>/pcqm4m-v2/split_dict.pt``: ``train / valid / test-dev / test-challenge`` index tensors
  (loaded with ``torch.load(weights_only=True)``: no code execution);
- 3D structures, which exist for the **train split only**, either
  * ``structures="sdf"``: ``<root>/pcqm4m-v2-train.sdf`` (from ``pcqm4m-v2-train.sdf.tar.gz``, OGB-LSC
    site), molecules in train-row order, **heavy atoms only**; ``add_hydrogens=True`` adds hydrogens
    with coordinates (``Chem.AddHs(addCoords=True)``, needs RDKit sanitization), or
  * ``structures="xyz"``: the older ``pcqm4m-v2_xyz.zip`` (2.7 GB; with hydrogens; atoms in
    alphabetical order), one ``<i>.xyz`` per molecule in sub-folders, ``i`` the dataset ``idx``;
    either the zip itself (read member by member, no extraction) or the extracted folder
    (``xyz_path``; default ``<root>/pcqm4m-v2_xyz.zip``, else ``<root>/pcqm4m-v2_xyz``).

Modes: ``targets=None`` (label-free pretraining over all train molecules; ``data.csv.gz`` and
``split_dict.pt`` are then optional) or ``targets=["homolumogap"]`` (eV, pooling mean).

Processing streams records into the memory-mapped store in chunks of ``chunk_size`` molecules, so
RAM stays bounded (3.38 M molecules, ~99.6 M atoms with hydrogens). Unparsable or invalid records
(RDKit returns no molecule, no atoms, atomic number outside 1..100, NaN coordinates):
``on_bad_record="skip"`` leaves them out and logs their count and first record numbers (also saved in
the store's ``meta.json``), ``"error"`` stops with the file and record number. The store keeps each
molecule's dataset ``idx`` (per-molecule array ``idx_in_dataset``).

Splits: the official valid/test splits have no 3D structures, so the train molecules are split at
random (``split_seed``), default 95% train / 5% validation / rest (none) test.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers as ASE_NUMBERS

from .base import AtomsDataModule, TargetInfo
from .checks import DataFormatError
from .storage import StoreWriter

log = logging.getLogger(__name__)
OGB_URL = "https://ogb.stanford.edu/docs/lsc/pcqm4mv2/"
LABEL_NAMES = ["homolumogap"]


def load_split_dict(path: Path) -> dict[str, np.ndarray]:
    """``split_dict.pt`` as numpy index arrays, loaded without unpickling arbitrary objects."""
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise DataFormatError(
            f"{path} could not be loaded safely (torch.load(weights_only=True)): {type(err).__name__}: {err}"
        ) from err
    if not isinstance(raw, dict) or "train" not in raw:
        raise DataFormatError(f"{path} must hold a dict with a 'train' index array; got {type(raw).__name__}")
    return {k: np.asarray(v, dtype=np.int64) for k, v in raw.items()}


def read_labels(csv_path: Path) -> np.ndarray:
    """``homolumogap`` (eV) indexed by ``idx`` (NaN for test rows)."""
    import pandas as pd

    try:
        frame = pd.read_csv(csv_path, usecols=["idx", "homolumogap"])
    except FileNotFoundError:
        raise
    except Exception as err:
        raise DataFormatError(f"{csv_path}: cannot read columns idx, homolumogap: {err}") from err
    idx = frame["idx"].to_numpy(np.int64)
    gaps = np.full(int(idx.max()) + 1 if idx.size else 0, np.nan)
    gaps[idx] = frame["homolumogap"].to_numpy(np.float64)
    return gaps


def parse_xyz(text: str) -> tuple[np.ndarray, np.ndarray]:
    """``(z [n], pos [n, 3])`` of one XYZ block; raises ``ValueError`` when malformed."""
    lines = text.strip("\n").splitlines()
    n = int(lines[0].split()[0])
    if n <= 0:
        raise ValueError("no atoms")
    if len(lines) < n + 2:
        raise ValueError(f"declares {n} atoms but has {len(lines) - 2} atom lines")
    z = np.empty(n, np.int64)
    pos = np.empty((n, 3))
    for k, line in enumerate(lines[2 : n + 2]):
        parts = line.split()
        symbol = parts[0]
        z[k] = int(symbol) if symbol.isdigit() else ASE_NUMBERS[symbol.capitalize()]
        pos[k] = [float(v) for v in parts[1:4]]
    return z, pos


class PCQM4Mv2DataModule(AtomsDataModule):
    """PCQM4Mv2 training molecules with 3D coordinates (see the module docstring for files).

    Args:
        root: folder holding ``pcqm4m-v2/`` and ``pcqm4m-v2-train.sdf`` (or the xyz zip/folder).
        structures: ``"sdf"`` (heavy atoms; OGB's current file) or ``"xyz"`` (with hydrogens).
        sdf_path: SDF file (default ``<root>/pcqm4m-v2-train.sdf``).
        xyz_path: xyz zip or extracted folder (default ``<root>/pcqm4m-v2_xyz.zip`` if it exists, else
            ``<root>/pcqm4m-v2_xyz``).
        add_hydrogens: SDF only: add hydrogens with RDKit-generated coordinates.
        targets: ``None`` (label-free) or ``["homolumogap"]`` (eV).
        on_bad_record: ``"skip"`` (log count and first records) or ``"error"``.
        chunk_size: molecules per write chunk (bounds RAM).
        Other arguments: see :class:`~atomzoo.datamodules.base.AtomsDataModule`.
    """

    name = "pcqm4mv2"

    def __init__(
        self,
        root: str,
        structures: str = "sdf",
        sdf_path: str | None = None,
        xyz_path: str | None = None,
        add_hydrogens: bool = False,
        targets: list[str | int] | str | None = None,
        on_bad_record: str = "skip",
        chunk_size: int = 50_000,
        num_train: int | float = 0.95,
        num_val: int | float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(targets=targets, num_train=num_train, num_val=num_val, **kwargs)
        if structures not in ("sdf", "xyz"):
            raise ValueError(f"structures={structures!r}: choose 'sdf' or 'xyz'")
        if on_bad_record not in ("skip", "error"):
            raise ValueError(f"on_bad_record={on_bad_record!r}: choose 'skip' or 'error'")
        if add_hydrogens and structures != "sdf":
            raise ValueError("add_hydrogens applies to structures='sdf' only (the xyz files already have hydrogens)")
        self.root = Path(root).expanduser()
        self.structures = structures
        self.sdf_path = Path(sdf_path).expanduser() if sdf_path else self.root / "pcqm4m-v2-train.sdf"
        if xyz_path:
            self.xyz_path = Path(xyz_path).expanduser()
        else:
            zipped = self.root / "pcqm4m-v2_xyz.zip"
            self.xyz_path = zipped if zipped.exists() else self.root / "pcqm4m-v2_xyz"
        self.add_hydrogens = add_hydrogens
        self.on_bad_record = on_bad_record
        self.chunk_size = int(chunk_size)
        self.forces = False
        self.csv_path = self.root / "pcqm4m-v2" / "raw" / "data.csv.gz"
        self.split_dict_path = self.root / "pcqm4m-v2" / "split_dict.pt"

    # ----- files -----------------------------------------------------------------------------
    def structure_path(self) -> Path:
        return self.sdf_path if self.structures == "sdf" else self.xyz_path

    def _require(self, path: Path, what: str) -> None:
        if not path.exists():
            raise FileNotFoundError(
                f"expected {what} at {path}; get the PCQM4Mv2 files from {OGB_URL} and place them as described "
                "in docs/datasets.md (nothing is downloaded automatically)"
            )

    def fingerprint(self) -> dict:
        files = []
        for p in (self.structure_path(), self.csv_path, self.split_dict_path):
            if p.exists():
                st = p.stat()
                files.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        return {
            "dataset": "pcqm4mv2",
            "structures": self.structures,
            "add_hydrogens": self.add_hydrogens,
            "on_bad_record": self.on_bad_record,
            "labelled": self.targets is not None,
            "files": files,
        }

    def store_path(self) -> Path:
        digest = hashlib.sha1(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:12]
        tag = f"{self.structures}{'-h' if self.add_hydrogens else ''}"
        return self.cache_dir / "pcqm4mv2" / f"{tag}-{digest}"

    # ----- records ---------------------------------------------------------------------------
    def _sdf_records(self):
        """``(record number, z, pos)`` per SDF record, or ``(record, None, reason)`` when unusable."""
        from rdkit import Chem, RDLogger

        RDLogger.DisableLog("rdApp.*")
        with open(self.sdf_path, "rb") as handle:
            supplier = Chem.ForwardSDMolSupplier(handle, removeHs=False, sanitize=self.add_hydrogens)
            for record, mol in enumerate(supplier):
                if mol is None:
                    yield record, None, "RDKit cannot parse it"
                    continue
                try:
                    if self.add_hydrogens:
                        mol = Chem.AddHs(mol, addCoords=True)
                    if mol.GetNumAtoms() == 0 or mol.GetNumConformers() == 0:
                        yield record, None, "no atoms or no coordinates"
                        continue
                    z = np.fromiter((a.GetAtomicNum() for a in mol.GetAtoms()), np.int64, mol.GetNumAtoms())
                    yield record, z, mol.GetConformer().GetPositions()
                except Exception as err:  # RDKit errors on odd records
                    yield record, None, f"{type(err).__name__}: {err}"

    def _xyz_names(self) -> tuple[list[str], np.ndarray]:
        """Member names (zip) or paths (folder) of the ``<i>.xyz`` files, sorted by ``i``."""
        if zipfile.is_zipfile(self.xyz_path) if self.xyz_path.is_file() else False:
            with zipfile.ZipFile(self.xyz_path) as zf:
                names = [n for n in zf.namelist() if n.endswith(".xyz")]
        elif self.xyz_path.is_dir():
            names = [os.path.join(d, f) for d, _, fs in os.walk(self.xyz_path) for f in fs if f.endswith(".xyz")]
        else:
            raise DataFormatError(f"{self.xyz_path} is neither a zip file nor a folder of <i>.xyz files")
        try:
            ids = np.array([int(os.path.basename(n)[:-4]) for n in names], dtype=np.int64)
        except ValueError as err:
            raise DataFormatError(f"{self.xyz_path}: xyz files must be named <i>.xyz with an integer i: {err}") from err
        order = np.argsort(ids, kind="stable")
        return [names[i] for i in order], ids[order]

    def _xyz_records(self, names: list[str]):
        zf = zipfile.ZipFile(self.xyz_path) if self.xyz_path.is_file() else None
        try:
            for record, name in enumerate(names):
                try:
                    text = zf.read(name).decode() if zf else Path(name).read_text()
                    z, pos = parse_xyz(text)
                except Exception as err:
                    yield record, None, f"{name}: {type(err).__name__}: {err}"
                    continue
                yield record, z, pos
        finally:
            if zf:
                zf.close()

    # ----- build -----------------------------------------------------------------------------
    def build_store(self, path: Path) -> None:
        source = self.structure_path()
        self._require(source, "the 3D structures" + (" (pcqm4m-v2-train.sdf)" if self.structures == "sdf" else " (pcqm4m-v2_xyz.zip or its extracted folder)"))
        labelled = self.targets is not None
        gaps, train = None, None
        if labelled or self.csv_path.exists():
            self._require(self.csv_path, "pcqm4m-v2/raw/data.csv.gz")
            gaps = read_labels(self.csv_path)
        if self.structures == "sdf" and (labelled or self.split_dict_path.exists()):
            self._require(self.split_dict_path, "pcqm4m-v2/split_dict.pt")
            train = load_split_dict(self.split_dict_path)["train"]
        if self.structures == "sdf":
            records = self._sdf_records()
            record_idx = train  # SDF record r is train molecule train[r]
        else:
            names, ids = self._xyz_names()
            records = self._xyz_records(names)
            record_idx = ids
        skipped: list[int] = []
        reasons: list[str] = []
        elements: set[int] = set()

        def bad(record: int, reason: str) -> None:
            if self.on_bad_record == "error":
                raise DataFormatError(f"{source}: record {record} (0-based) is unusable: {reason} (on_bad_record='skip' leaves such records out)")
            skipped.append(record)
            if len(reasons) < 5:
                reasons.append(f"{record}: {reason}")

        with StoreWriter(path, self.fingerprint()) as writer:
            buf_z, buf_pos, counts, idxs, labels = [], [], [], [], []

            def flush() -> None:
                if counts:
                    writer.append(
                        atoms={"z": np.concatenate(buf_z).astype(np.uint8), "pos": np.concatenate(buf_pos).astype(np.float32)},
                        counts=np.asarray(counts, np.int64),
                        molecules={"labels": np.asarray(labels, np.float64)[:, None], "idx_in_dataset": np.asarray(idxs, np.int64)},
                    )
                    for b in (buf_z, buf_pos, counts, idxs, labels):
                        b.clear()

            n_records = 0
            for record, z, pos in records:
                n_records = record + 1
                if z is None:
                    bad(record, pos)
                    continue
                if record_idx is not None and record >= record_idx.size:
                    raise DataFormatError(f"{source} has more records than the {record_idx.size} train molecules of {self.split_dict_path}")
                idx = int(record_idx[record]) if record_idx is not None else record
                if z.size == 0:
                    bad(record, "no atoms")
                    continue
                if z.min() < 1 or z.max() > 100:
                    bad(record, f"atomic number {int(z[(z < 1) | (z > 100)][0])} outside 1..100")
                    continue
                if not np.isfinite(pos).all():
                    bad(record, "NaN or infinite coordinates")
                    continue
                label = gaps[idx] if gaps is not None and idx < gaps.size else np.nan
                if labelled and not np.isfinite(label):
                    bad(record, f"no finite homolumogap for idx {idx} in {self.csv_path}")
                    continue
                buf_z.append(z)
                buf_pos.append(pos)
                counts.append(z.size)
                idxs.append(idx)
                labels.append(label)
                elements.update(np.unique(z).tolist())
                if len(counts) >= self.chunk_size:
                    flush()
            flush()
            if skipped:
                log.warning(
                    "PCQM4Mv2: skipped %d of %d records of %s (first: %s)", len(skipped), n_records, source, "; ".join(reasons)
                )
            if n_records - len(skipped) == 0:
                raise DataFormatError(f"{source}: no usable molecules")
            writer.describe(LABEL_NAMES, ["eV"], sorted(int(v) for v in elements))
            writer.meta["num_records"] = n_records
            writer.meta["num_skipped"] = len(skipped)
            writer.meta["skipped_records"] = skipped[:1000]
            writer.meta["skip_reasons"] = reasons
        self.num_skipped = len(skipped)

    def label_names(self) -> list[str]:
        return list(LABEL_NAMES)

    def target_info(self, name: str) -> TargetInfo:
        if name != "homolumogap":
            raise ValueError(f"unknown PCQM4Mv2 target {name!r}; valid: homolumogap (or targets=None)")
        return TargetInfo(name="homolumogap", unit="eV", pooling="mean")
