"""Any file ASE can read (extended XYZ, XYZ, ASE database, VASP OUTCAR, ...) as a molecular dataset.

Energies, forces and other per-structure properties are read, in this order of preference, from
``atoms.info[key]`` (extxyz comment-line fields), ``atoms.arrays[key]`` (per-atom columns, forces only)
and the attached calculator's results (``atoms.calc.results[key]``, e.g. extxyz ``energy=``/``forces``
written by a SinglePointCalculator, or ASE db rows). The file is streamed (``ase.io.iread``) into the
store in chunks, so RAM stays bounded.

Units: the file's units are *declared* by name (``energy_unit``: eV, meV, Hartree/Ha, Rydberg,
kcal/mol, kJ/mol; ``length_unit``: Angstrom/A, Bohr, nm) and converted with the zoo's one unit table
(:mod:`atomzoo.units`, ASE's constants): energies to eV, positions to Angstrom, forces by
energy/length to eV/A (a Hartree/Bohr force is multiplied by Hartree/Bohr = 51.42 eV/A, not by the
energy factor alone). The store records the file's units and the factors used. Other properties keep
their units (``property_units`` only labels them).

Structures are read from ASE by :func:`atomzoo.nn.batch.structure_arrays`, the same reader the
prediction API and the ASE calculator batch structures with (:func:`atomzoo.nn.batch.atoms_to_batch`).

Checks (every record, before anything is stored; errors name the file, the record and the key):
the energy must be one value per structure (a per-atom column such as ``energies`` ``[n_atoms]`` is
refused with the shape found and the shape needed), forces ``[n_atoms, 3]``, every property one value;
a periodic direction needs a cell of non-zero volume.

Periodic structures: each structure's ``cell`` (lattice vectors as rows, converted to Angstrom) and
``pbc`` (extxyz ``Lattice=`` / ``pbc=``, ASE databases, any format ASE reads them from) are stored
and reach the model as ``batch.cell`` ``[B, 3, 3]`` and ``batch.pbc`` ``[B, 3]``; the backbones'
neighbour list then includes the periodic images (:func:`atomzoo.nn.graph.build_graph`). A box on a
structure with ``pbc`` all false is ignored, as ASE does.

Stress (``stress_key``; MPtrj-like files): the per-structure stress tensor, ``3x3`` or 6 values in
ASE's Voigt order ``(xx, yy, zz, yz, xz, xy)`` (9 values are read as ``3x3``), in ASE's sign
convention (``sigma = (1/V) dE/d(strain)``, positive = tensile; what ASE writes; VASP's raw
OUTCAR / MPtrj-JSON numbers have the opposite sign and ASE's OUTCAR reader flips them), in
``stress_unit`` (``eV/A^3``, ``GPa``, ``kbar``; :mod:`atomzoo.units`, ASE's constants), stored as
``stress`` ``[M, 3, 3]`` in eV/A^3. A key whose name contains ``virial`` is a virial ``W`` (energy
unit, ``energy_unit``) and is stored as the stress ``-W / V`` (``V`` the cell volume in A^3). Only
fully periodic structures have a stress: a stress on a molecule, slab or wire is an error naming the
record; such structures without one get a NaN row (no stress loss), as do periodic ones without one
when ``allow_missing_labels``. Without ``stress_key`` a ``stress`` / ``virial`` in the file is
reported once as ignored.

The cache fingerprint holds the file's resolved path, size and modification time, the format, index
and all keys/factors, so editing the file or the options rebuilds the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np

from atomzoo.nn.batch import structure_arrays
from atomzoo.units import conversion_factor, unit_table

from .base import AtomsDataModule, TargetInfo
from .checks import DataFormatError, check_atomic_numbers, check_finite
from .storage import StoreWriter

log = logging.getLogger(__name__)
CHUNK = 10_000
#: per-structure keys (``atoms.info``, any capitalisation) that change the physics but no backbone reads,
#: with the value the models assume (neutral; a multiplicity of 1 is the closed-shell singlet)
IGNORED_INFO = {"charge": 0, "total_charge": 0, "spin": 0, "spin_multiplicity": 1, "multiplicity": 1}
#: per-structure tensors read only with ``stress_key`` (``atoms.info`` in any capitalisation, or the
#: calculator's results)
IGNORED_TENSORS = ("stress", "virial")
#: per-atom arrays that change the physics but no backbone reads (assumed zero)
IGNORED_ARRAYS = ("initial_charges", "initial_magmoms")


def unit_factor(name: str, kind: str) -> float:
    """Factor converting a value in unit ``name`` to eV (``kind="energy"``) or Angstrom (``"length"``),
    from :func:`atomzoo.units.conversion_factor`.

    Raises ``ValueError`` naming the option and the unit names known.
    """
    try:
        return float(conversion_factor(name, kind))
    except ValueError as err:
        raise ValueError(f"{kind}_unit={err} (--data.init_args.{kind}_unit)") from None


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
        energy_unit: the file's energy unit (``eV``, ``meV``, ``Hartree`` or ``Ha``, ``Rydberg``,
            ``kcal/mol``, ``kJ/mol``: :mod:`atomzoo.units`); energies are stored in eV, forces in eV/A
            (metrics show meV, meV/A).
        length_unit: the file's length unit (``Angstrom`` or ``A``, ``Bohr``, ``nm``) of positions and of
            forces' denominator; positions are stored in Angstrom.
        energy_factor: removed (one factor for energies and forces was ambiguous: Hartree/Bohr
            forces came out 0.529x too small); giving it raises a ``ValueError`` pointing to
            ``energy_unit`` / ``length_unit``.
        targets: labels to train on; default ``["energy"]`` if ``energy_key`` is set, else none.
        forces: train on forces (linked to the regression objective); default: when ``forces_key``
            is set.
        stress_key: key of the per-structure stress (or, when the name contains ``virial``, the
            virial) of fully periodic structures; ``None`` (default): not read (module docstring).
        stress_unit: the file's stress unit (``eV/A^3``, ``GPa``, ``kbar``); stored in eV/A^3.
            A virial is in ``energy_unit``.
        stress: train on the stress (linked to the regression objective); default: when
            ``stress_key`` is set.
        allow_missing_labels: structures without energy / forces / properties get NaN labels instead of
            an error, so unlabelled files can be predicted (``zoo predict --out`` sets it for ASE files);
            fitting, validating or testing on such a file raises. ``None``: ``False``.
        Prediction (``predict_dataloader``): every structure of the file, in file order, whatever the
        split; :meth:`molecule_ids` names them ``<file name>:<structure number>``.
        Other arguments: see :class:`~atomzoo.datamodules.base.AtomsDataModule` (default split 0.8/0.1/rest; with
            ``num_val`` and ``num_test`` given, training gets the rest).
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
        energy_unit: str = "eV",
        length_unit: str = "Angstrom",
        energy_factor: float | None = None,
        targets: list[str | int] | str | None = None,
        forces: bool | None = None,
        stress_key: str | None = None,
        stress_unit: str = "eV/A^3",
        stress: bool | None = None,
        allow_missing_labels: bool | None = None,
        **kwargs,
    ) -> None:
        if targets is None and energy_key:
            targets = ["energy"]
        self.energy_key = energy_key  # label_names() works before the base class checks the targets
        self.property_keys = list(property_keys or [])
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
        if energy_factor is not None:
            raise ValueError(
                f"energy_factor={energy_factor} is no longer accepted: it scaled energies and forces alike, which is "
                "wrong for forces in e.g. Hartree/Bohr. Declare the file's units instead: "
                "--data.init_args.energy_unit Hartree --data.init_args.length_unit Bohr "
                f"(energy units: {', '.join(unit_table('energy'))}; length units: {', '.join(unit_table('length'))})"
            )
        #: the file's units and the factors to the stored eV / Angstrom / eV/A
        self.file_energy_unit, self.file_length_unit = energy_unit, length_unit
        self.energy_factor = unit_factor(energy_unit, "energy")
        self.length_factor = unit_factor(length_unit, "length")
        self.force_factor = conversion_factor(f"{energy_unit}/{length_unit}", "force")
        self.energy_unit = "eV"
        self.force_unit = "eV/A"
        #: read by the CLI: the regression objective trains on forces when this is True
        self.forces = bool(forces_key) if forces is None else bool(forces)
        if self.forces and not forces_key:
            raise ValueError("forces=True needs forces_key (the key of the per-atom forces in the file)")
        self.stress_key = stress_key
        self.file_stress_unit = stress_unit
        try:
            self.stress_factor = conversion_factor(stress_unit, "stress")
        except ValueError as err:
            raise ValueError(f"stress_unit={err} (--data.init_args.stress_unit)") from None
        #: read by the CLI: the regression objective trains on the stress when this is True
        self.stress = bool(stress_key) if stress is None else bool(stress)
        if self.stress and not stress_key:
            raise ValueError("stress=True needs stress_key (the key of the per-structure stress or virial in the file)")
        self.stress_unit = "eV/A^3" if stress_key else None
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
            "energy_unit": self.file_energy_unit,
            "length_unit": self.file_length_unit,
            "periodic": 1,  # stores written since cell / pbc are kept
            "ignored": 3,  # stores written since the ignored-physics count is case-blind, multiplicity 1 neutral, stress
        } | ({"stress_key": self.stress_key, "stress_unit": self.file_stress_unit} if self.stress_key else {}) | (
            {"allow_missing_labels": True} if self.allow_missing_labels else {})

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
        db = connect(str(self.path), type="db")
        total = db.count()
        if isinstance(index, int):  # as for a list: -1 is the last row
            position = index + total if index < 0 else index
            if not 0 <= position < total:
                raise DataFormatError(f"{self.path}: index {self.index!r} is out of range for its {total} rows")
            start, stop, step = position, position + 1, 1
        else:
            start, stop, step = index.indices(total)  # negative start/stop count from the end, as for a list
        if step < 0:
            raise DataFormatError(
                f"{self.path}: index {self.index!r} reads an ASE database backwards, which is not supported; "
                "use a positive step (--data.init_args.index)"
            )
        for row in itertools.islice(db.select(), start, max(start, stop), step):
            atoms = row.toatoms()
            atoms.info.update(row.key_value_pairs)
            atoms.info.update({k: v for k, v in (row.get("data") or {}).items() if k not in atoms.info})
            yield atoms

    def _convert(self, record: int, atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None,
                                                    list[float], np.ndarray | None]:
        """``(z, pos, cell, pbc, forces, labels, stress)`` of one structure in eV / A / eV/A / eV/A^3, checked."""
        where = f"{self.path}, record {record}"
        z, pos, cell, periodic = structure_arrays(atoms, self.length_factor)
        if z.size == 0:
            raise DataFormatError(f"{where}: the structure has no atoms")
        check_atomic_numbers(z, where)
        if periodic.any():
            box = np.asarray(atoms.cell, dtype=np.float64)  # as written in the file
            if abs(np.linalg.det(box)) < 1e-6:
                raise DataFormatError(
                    f"{where}: the structure is periodic (pbc={periodic.tolist()}) but its cell "
                    f"{np.round(box, 4).tolist()} has zero volume; give three lattice vectors (extxyz: Lattice=\"...\"), "
                    "or set pbc=False for a free molecule (extxyz: pbc=\"F F F\")"
                )
        check_finite(pos[None], "positions", str(self.path), record)
        labels = []
        if self.energy_key:
            labels.append(self._scalar(atoms, self.energy_key, "energy", where, z.size) * self.energy_factor)
        for key in self.property_keys:
            labels.append(self._scalar(atoms, key, "property", where, z.size))
        present = [v for v in labels if not (self.allow_missing_labels and np.isnan(v))]
        check_finite(np.asarray([present]), "labels", str(self.path), record)
        self._note_ignored(atoms)
        forces = None
        if self.forces_key:
            value = _lookup(atoms, self.forces_key, per_atom=True)
            if value is None and self.allow_missing_labels:
                value = np.full((z.size, 3), np.nan)
            elif value is None:
                raise DataFormatError(
                    f"{where}: no forces under key {self.forces_key!r} (per-atom arrays: {sorted(atoms.arrays)}; "
                    "--data.init_args.forces_key, or null for none)"
                )
            forces = np.asarray(value, dtype=np.float64)
            if forces.shape != (z.size, 3):
                raise DataFormatError(
                    f"{where}: key {self.forces_key!r} (forces) has shape {forces.shape}; forces need one 3-vector "
                    f"per atom, shape ({z.size}, 3) (--data.init_args.forces_key)"
                )
            if not (self.allow_missing_labels and np.isnan(forces).all()):
                check_finite(forces[None], "forces", str(self.path), record)
            forces = forces * self.force_factor
        stress = self._stress(atoms, where, cell, periodic, record) if self.stress_key else None
        return z, pos, cell, periodic, forces, labels, stress

    def _stress(self, atoms, where: str, cell: np.ndarray, periodic: np.ndarray, record: int) -> np.ndarray:
        """The structure's stress ``[3, 3]`` in eV/A^3 (ASE's sign), NaN when it has none (module docstring)."""
        from ase.stress import voigt_6_to_full_3x3_stress

        key = self.stress_key
        value = _lookup(atoms, key, per_atom=False)
        if value is None:
            if periodic.all() and not self.allow_missing_labels:
                raise DataFormatError(
                    f"{where}: the structure is periodic but has no stress under key {key!r} "
                    f"(info: {sorted(atoms.info)}; "
                    "--data.init_args.stress_key, or null for none)"
                )
            return np.full((3, 3), np.nan)
        if not periodic.all():
            raise DataFormatError(
                f"{where}: key {key!r} gives a stress to a structure that is not fully periodic "
                f"(pbc={periodic.tolist()}); "
                "only bulk crystals (pbc all true, with a cell) have a stress: remove it or set pbc=\"T T T\""
            )
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataFormatError(f"{where}: key {key!r} (stress) holds {value!r}, not numbers") from err
        if array.shape in ((3, 3), (9,)):
            array = array.reshape(3, 3)
        elif array.shape == (6,):
            array = voigt_6_to_full_3x3_stress(array)
        else:
            raise DataFormatError(
                f"{where}: key {key!r} (stress) has shape {tuple(array.shape)}; a stress needs 3x3, 9 or 6 values "
                "(ASE's Voigt order xx yy zz yz xz xy) (--data.init_args.stress_key)"
            )
        check_finite(array[None], "stress", str(self.path), record)
        if "virial" in key.lower():  # W = -V sigma: a virial in the file's energy unit
            return -array * self.energy_factor / abs(np.linalg.det(cell))
        return array * self.stress_factor

    @staticmethod
    def _ignored_phrase(key: str, count: int) -> str:
        if key.lower() in IGNORED_TENSORS:
            return f"{key!r} in {count} structures (not trained on: read it with --data.init_args.stress_key)"
        if IGNORED_INFO.get(key.lower()) == 1:
            return f"{key!r} other than 1 in {count} structures"
        return f"non-zero {key!r} in {count} structures"

    def _note_ignored(self, atoms) -> None:
        """Count structures carrying physics the models do not use (net charge, spin, initial charges/moments,
        stress / virial)."""
        found = [k for k, v in atoms.info.items()
                 if str(k).lower() in IGNORED_INFO and np.any(np.asarray(v, dtype=float) != IGNORED_INFO[str(k).lower()])]
        found += [k for k in IGNORED_ARRAYS if k in atoms.arrays and np.any(atoms.arrays[k] != 0)]
        results = getattr(getattr(atoms, "calc", None), "results", None) or {}
        found += [k for k in {**results, **atoms.info} if str(k).lower() in IGNORED_TENSORS and k != self.stress_key]
        for key in found:
            self._ignored[key] = self._ignored.get(key, 0) + 1

    def _scalar(self, atoms, key: str, role: str, where: str, n_atoms: int) -> float:
        """The one value per structure stored under ``key``; a ``DataFormatError`` for any other shape."""
        value = _lookup(atoms, key, per_atom=False)
        option = "energy_key" if role == "energy" else "property_keys"
        if value is None and self.allow_missing_labels:
            return float("nan")
        if value is None:
            raise DataFormatError(
                f"{where}: no {role} under key {key!r} (info: {sorted(atoms.info)}; per-atom arrays: "
                f"{sorted(atoms.arrays)}) (--data.init_args.{option})"
            )
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise DataFormatError(f"{where}: key {key!r} ({role}) holds {value!r}, not a number") from err
        if array.size != 1:
            hint = (
                f" -- it looks like one value per atom ({n_atoms} atoms); give the key of the structure's total "
                "instead, or sum the per-atom values into one"
                if array.shape[:1] == (n_atoms,)
                else ""
            )
            raise DataFormatError(
                f"{where}: key {key!r} ({role}) has shape {tuple(array.shape)}; the {role} needs one value per "
                f"structure, shape () or (1,){hint} (--data.init_args.{option})"
            )
        return float(array.reshape(-1)[0])

    def build_store(self, path: Path) -> None:
        names = self.label_names()
        elements: set[int] = set()
        with StoreWriter(path, self.fingerprint()) as writer:
            buf: dict[str, list] = {"z": [], "pos": [], "forces": [], "labels": [], "counts": [], "cell": [], "pbc": [],
                                    "stress": []}

            def flush() -> None:
                if not buf["counts"]:
                    return
                atoms = {"z": np.concatenate(buf["z"]).astype(np.uint8), "pos": np.concatenate(buf["pos"]).astype(np.float32)}
                if self.forces_key:
                    atoms["forces"] = np.concatenate(buf["forces"]).astype(np.float32)
                molecules = {"labels": np.asarray(buf["labels"], dtype=np.float64).reshape(len(buf["counts"]), len(names)),
                             "cell": np.asarray(buf["cell"], dtype=np.float64).reshape(-1, 3, 3),
                             "pbc": np.asarray(buf["pbc"], dtype=np.uint8).reshape(-1, 3)}
                if self.stress_key:
                    molecules["stress"] = np.asarray(buf["stress"], dtype=np.float64).reshape(-1, 3, 3)
                writer.append(atoms=atoms, counts=np.asarray(buf["counts"]), molecules=molecules)
                for v in buf.values():
                    v.clear()

            n = 0
            self._ignored: dict[str, int] = {}
            for record, atoms in self._iter_structures():
                z, pos, cell, periodic, forces, labels, stress = self._convert(record, atoms)
                elements.update(int(v) for v in np.unique(z))
                buf["z"].append(z)
                buf["pos"].append(pos)
                buf["forces"].append(forces)
                buf["labels"].append(labels)
                buf["counts"].append(z.size)
                buf["pbc"].append(periodic)
                buf["cell"].append(cell)
                buf["stress"].append(stress)
                n += 1
                if len(buf["counts"]) >= CHUNK:
                    flush()
            flush()
            if n == 0:
                raise DataFormatError(f"{self.path}: no structures read (index {self.index!r})")
            writer.describe(
                names,
                [self.energy_unit if k == "energy" else self.property_units.get(k, "") for k in names],
                sorted(elements),
                force_unit=self.force_unit if self.forces_key else None,
            )
            writer.meta["units"] = {
                "positions": "A", "energy": self.energy_unit, "forces": self.force_unit,
                "source_energy": self.file_energy_unit, "source_length": self.file_length_unit,
                "source_forces": f"{self.file_energy_unit}/{self.file_length_unit}",
                "energy_factor": self.energy_factor, "length_factor": self.length_factor,
                "force_factor": self.force_factor,
            } | ({"stress": "eV/A^3", "source_stress": self.file_stress_unit, "stress_factor": self.stress_factor}
                 if self.stress_key else {})  # fmt: skip
            writer.meta["source"] = str(self.path)
            writer.meta["ignored"] = self._ignored

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
        ignored = self.store.meta.get("ignored") or {}
        if ignored and not getattr(self, "_warned_ignored", False):
            self._warned_ignored = True
            warnings.warn(
                f"{self.path}: the models ignore "
                + ", ".join(self._ignored_phrase(k, n) for k, n in ignored.items())
                + ("; predictions are the same for every charge/spin state"
                   if any(k.lower() not in IGNORED_TENSORS for k in ignored) else ""),
                stacklevel=2,
            )

    def target_info(self, name: str) -> TargetInfo:
        if name == "energy" and self.energy_key:
            return TargetInfo(name="energy", unit=self.energy_unit, pooling="sum")
        if name in self.property_keys:
            return TargetInfo(name=name, unit=self.property_units.get(name, ""), pooling=self.property_pooling.get(name, "mean"))
        raise ValueError(f"unknown target {name!r} for {self.path}; valid: {', '.join(self.label_names())}")

    # ----- prediction: the whole file, labels optional -----------------------------------------
    def predict_dataloader(self):
        """Every structure of the file in file order (not the test split), labelled or not."""
        from .base import StoreDataset
        from .loaders import ExactDistributedSampler, StoreDataLoader

        if self.store is None:
            self.setup("predict")
        dataset = StoreDataset(self.store, np.arange(len(self.store)), self.label_columns)
        return StoreDataLoader(dataset, batch_size=self.eval_batch_size, sampler=ExactDistributedSampler(dataset),
                          **self._loader_options())  # fmt: skip

    def molecule_ids(self, index) -> list[str]:
        """Names of store rows ``index`` for prediction files: ``"<file name>:<structure number>"`` (0-based,
        counted over the structures ``index`` selects from the file)."""
        return [f"{self.path.name}:{int(i)}" for i in np.asarray(index).reshape(-1)]
