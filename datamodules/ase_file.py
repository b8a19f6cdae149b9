"""Any file ASE can read (extended XYZ, XYZ, ASE database, VASP OUTCAR, ...) as a molecular dataset.

Energies, forces and other per-structure properties are read, in this order of preference, from
``atoms.info[key]`` (extxyz comment-line fields), ``atoms.arrays[key]`` (per-atom columns, forces only)
and the attached calculator's results (``atoms.calc.results[key]``, e.g. extxyz ``energy=``/``forces``
written by a SinglePointCalculator, or ASE db rows). The file is streamed (``ase.io.iread``) into the
store in chunks, so RAM stays bounded.

Units: energies and forces are multiplied by ``energy_factor`` to reach ``energy_unit`` (default 1.0,
eV; e.g. ``energy_factor: 27.211386246`` for Hartree files, ``0.0433641`` for kcal/mol). Positions
are taken as Angstrom. Other properties keep their units (``property_units`` only labels them).

The cache fingerprint holds the file's resolved path, size and modification time, the format, index
and all keys/factors, so editing the file or the options rebuilds the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from .base import AtomsDataModule, TargetInfo
from .checks import DataFormatError, check_atomic_numbers, check_finite
from .storage import StoreWriter

log = logging.getLogger(__name__)
CHUNK = 10_000


def _lookup(atoms, key: str, per_atom: bool):
    """Value of ``key`` for one structure from info / arrays / calculator results, or ``None``."""
    if not per_atom and key in atoms.info:
        return atoms.info[key]
    if per_atom and key in atoms.arrays:
        return atoms.arrays[key]
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    if key in results:
        return results[key]
    if per_atom and key in atoms.info:
        return atoms.info[key]
    return None


class ASEFileDataModule(AtomsDataModule):
    """Structures from any ASE-readable file.

    Args:
        path: the file (``.extxyz``, ``.xyz``, ``.db``, ...).
        format: ASE format name (``"extxyz"``, ``"db"``, ...); ``None`` lets ASE guess from the name.
        index: ASE index string of the structures to read (default all, ``":"``).
        energy_key: key of the total energy; ``None`` for none. Label name ``"energy"`` (pooling sum).
        forces_key: key of the per-atom forces ``[N, 3]``; ``None`` for none. Stored as ``forces``.
        property_keys: further per-structure scalar properties (labels named by their key).
        property_units: optional unit per property key (metadata only).
        property_pooling: ``"sum"`` or ``"mean"`` per property key (default ``"mean"``).
        energy_factor: multiplies energies and forces (to ``energy_unit``, ``energy_unit``/A).
        energy_unit: unit after the factor (default ``"eV"``; metrics then show meV, meV/A).
        targets: labels to train on; default ``["energy"]`` if ``energy_key`` is set, else none.
        forces: train on forces (linked to the regression objective); default: when ``forces_key``
            is set.
        allow_missing_labels: structures without energy / forces / properties get NaN labels instead of
            an error, so unlabelled files can be predicted (``zoo predict --out`` sets it for ASE files);
            fitting, validating or testing on such a file raises. ``None``: ``False``.
        Prediction (``predict_dataloader``): every structure of the file, in file order, whatever the
        split; :meth:`molecule_ids` names them ``<file name>:<structure number>``.
        Other arguments: see :class:`~atomzoo.datamodules.base.AtomsDataModule` (default split 0.8/0.1/rest).
    """

    name = "ase_file"

    def __init__(
        self,
        path: str,
        format: str | None = None,
        index: str = ":",
        energy_key: str | None = "energy",
        forces_key: str | None = "forces",
        property_keys: list[str] | None = None,
        property_units: dict[str, str] | None = None,
        property_pooling: dict[str, str] | None = None,
        energy_factor: float = 1.0,
        energy_unit: str = "eV",
        targets: list[str] | None = None,
        forces: bool | None = None,
        allow_missing_labels: bool | None = None,
        **kwargs,
    ) -> None:
        if targets is None and energy_key:
            targets = ["energy"]
        super().__init__(targets=targets, **kwargs)
        self.path = Path(path).expanduser()
        self.format = format
        self.index = index
        self.energy_key = energy_key
        self.forces_key = forces_key
        self.property_keys = list(property_keys or [])
        self.property_units = dict(property_units or {})
        self.property_pooling = dict(property_pooling or {})
        for key, pooling in self.property_pooling.items():
            if pooling not in ("sum", "mean"):
                raise ValueError(f"property_pooling[{key!r}]={pooling!r}: choose 'sum' or 'mean'")
        self.energy_factor = float(energy_factor)
        self.energy_unit = energy_unit
        self.force_unit = f"{energy_unit}/A"
        #: read by the CLI: the regression objective trains on forces when this is True
        self.forces = bool(forces_key) if forces is None else bool(forces)
        if self.forces and not forces_key:
            raise ValueError("forces=True needs forces_key (the key of the per-atom forces in the file)")
        self.allow_missing_labels = bool(allow_missing_labels)

    def label_names(self) -> list[str]:
        return (["energy"] if self.energy_key else []) + self.property_keys

    def fingerprint(self) -> dict:
        stat = self.path.stat() if self.path.exists() else None
        return {
            "dataset": "ase_file",
            "file": str(self.path.resolve()),
            "size": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None,
            "format": self.format,
            "index": self.index,
            "energy_key": self.energy_key,
            "forces_key": self.forces_key,
            "property_keys": self.property_keys,
            "energy_factor": self.energy_factor,
            "energy_unit": self.energy_unit,
        } | ({"allow_missing_labels": True} if self.allow_missing_labels else {})

    def store_path(self) -> Path:
        digest = hashlib.sha1(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:12]
        return self.cache_dir / "ase_file" / f"{self.path.stem}-{digest}"

    def _iter_structures(self):
        from ase.io import iread

        if not self.path.exists():
            raise FileNotFoundError(f"ASE file {self.path} does not exist (--data.init_args.path)")
        record = -1
        try:
            for record, atoms in enumerate(self._read(iread)):
                yield record, atoms
        except DataFormatError:
            raise
        except Exception as err:  # ASE raises many types for malformed files
            raise DataFormatError(
                f"{self.path}: ASE could not read record {record + 1} (0-based; format {self.format or 'guessed'}): "
                f"{type(err).__name__}: {err}"
            ) from err

    def _read(self, iread):
        """Structures of the file; ASE databases are read row by row with their key-value pairs in ``info``."""
        is_db = self.format == "db" or (self.format is None and self.path.suffix == ".db")
        if not is_db:
            yield from iread(str(self.path), index=self.index, format=self.format)
            return
        import itertools

        from ase.db import connect
        from ase.io.formats import string2index

        index = string2index(self.index)
        rows = connect(str(self.path), type="db").select()
        if isinstance(index, int):
            rows = itertools.islice(rows, index, index + 1)
        else:
            rows = itertools.islice(rows, index.start, index.stop, index.step)
        for row in rows:
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            atoms.info.update({k: v for k, v in (row.get("data") or {}).items() if k not in atoms.info})
            yield atoms

    def _convert(self, record: int, atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[float]]:
        where = f"{self.path}, record {record}"
        z = atoms.numbers.astype(np.int64)
        if z.size == 0:
            raise DataFormatError(f"{where}: the structure has no atoms")
        check_atomic_numbers(z, where)
        pos = np.asarray(atoms.positions, dtype=np.float64)
        check_finite(pos[None], "positions", str(self.path), record)
        labels = []
        if self.energy_key:
            value = _lookup(atoms, self.energy_key, per_atom=False)
            if value is None and self.allow_missing_labels:
                labels.append(float("nan"))
            elif value is None:
                raise DataFormatError(f"{where}: no energy under key {self.energy_key!r} (info: {sorted(atoms.info)})")
            else:
                labels.append(float(np.asarray(value).reshape(-1)[0]) * self.energy_factor)
        for key in self.property_keys:
            value = _lookup(atoms, key, per_atom=False)
            if value is None and self.allow_missing_labels:
                labels.append(float("nan"))
                continue
            if value is None:
                raise DataFormatError(f"{where}: no property {key!r} in atoms.info or calculator results")
            value = np.asarray(value, dtype=np.float64)
            if value.size != 1:
                raise DataFormatError(f"{where}: property {key!r} has shape {value.shape}; only scalars are supported")
            labels.append(float(value.reshape(-1)[0]))
        present = [v for v in labels if not (self.allow_missing_labels and np.isnan(v))]
        check_finite(np.asarray([present]), "labels", str(self.path), record)
        forces = None
        if self.forces_key:
            value = _lookup(atoms, self.forces_key, per_atom=True)
            if value is None and self.allow_missing_labels:
                value = np.full((z.size, 3), np.nan)
            elif value is None:
                raise DataFormatError(f"{where}: no forces under key {self.forces_key!r}")
            forces = np.asarray(value, dtype=np.float64)
            if forces.shape != (z.size, 3):
                raise DataFormatError(f"{where}: forces have shape {forces.shape}, expected ({z.size}, 3)")
            if not (self.allow_missing_labels and np.isnan(forces).all()):
                check_finite(forces[None], "forces", str(self.path), record)
            forces = forces * self.energy_factor
        return z, pos, forces, labels

    def build_store(self, path: Path) -> None:
        names = self.label_names()
        elements: set[int] = set()
        with StoreWriter(path, self.fingerprint()) as writer:
            buf: dict[str, list] = {"z": [], "pos": [], "forces": [], "labels": [], "counts": []}

            def flush() -> None:
                if not buf["counts"]:
                    return
                atoms = {"z": np.concatenate(buf["z"]).astype(np.uint8), "pos": np.concatenate(buf["pos"]).astype(np.float32)}
                if self.forces_key:
                    atoms["forces"] = np.concatenate(buf["forces"]).astype(np.float32)
                molecules = {"labels": np.asarray(buf["labels"], dtype=np.float64).reshape(len(buf["counts"]), len(names))}
                writer.append(atoms=atoms, counts=np.asarray(buf["counts"]), molecules=molecules)
                for v in buf.values():
                    v.clear()

            n = 0
            for record, atoms in self._iter_structures():
                z, pos, forces, labels = self._convert(record, atoms)
                elements.update(int(v) for v in np.unique(z))
                buf["z"].append(z)
                buf["pos"].append(pos)
                buf["forces"].append(forces)
                buf["labels"].append(labels)
                buf["counts"].append(z.size)
                n += 1
                if len(buf["counts"]) >= CHUNK:
                    flush()
            flush()
            if n == 0:
                raise DataFormatError(f"{self.path}: no structures read (index {self.index!r})")
            writer.meta["label_names"] = names
            writer.meta["label_units"] = [self.energy_unit if k == "energy" else self.property_units.get(k, "") for k in names]
            writer.meta["atomic_numbers"] = sorted(elements)
            writer.meta["units"] = {"positions": "A", "energy": self.energy_unit, "forces": self.force_unit,
                                    "energy_factor": self.energy_factor}  # fmt: skip
            writer.meta["source"] = str(self.path)

    def target_info(self, name: str) -> TargetInfo:
        if name == "energy" and self.energy_key:
            return TargetInfo(name="energy", unit=self.energy_unit, pooling="sum")
        if name in self.property_keys:
            return TargetInfo(name=name, unit=self.property_units.get(name, ""), pooling=self.property_pooling.get(name, "mean"))
        raise ValueError(f"unknown target {name!r} for {self.path}; valid: {', '.join(self.label_names())}")

    # ----- prediction: the whole file, labels optional -----------------------------------------
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if self.allow_missing_labels and stage in ("fit", "validate", "test") and self.label_columns is not None:
            labels = np.asarray(self.store.arrays["labels"])[:, self.label_columns]
            if np.isnan(labels).any():
                record = int(np.flatnonzero(np.isnan(labels).any(axis=1))[0])
                raise DataFormatError(
                    f"{self.path}: structure {record} has no label ({', '.join(self.targets)}); files with missing "
                    f"labels can only be predicted (allow_missing_labels=True), not used for {stage}"
                )

    def predict_dataloader(self):
        """Every structure of the file in file order (not the test split), labelled or not."""
        from torch_geometric.loader import DataLoader

        from .base import StoreDataset
        from .loaders import ExactDistributedSampler

        if self.store is None:
            self.setup("predict")
        dataset = StoreDataset(self.store, np.arange(len(self.store)), self.label_columns)
        return DataLoader(dataset, batch_size=self.eval_batch_size, sampler=ExactDistributedSampler(dataset),
                          **self._loader_options())  # fmt: skip

    def molecule_ids(self, index) -> list[str]:
        """Names of store rows ``index`` for prediction files: ``"<file name>:<structure number>"`` (0-based,
        counted over the structures ``index`` selects from the file)."""
        return [f"{self.path.name}:{int(i)}" for i in np.asarray(index).reshape(-1)]
