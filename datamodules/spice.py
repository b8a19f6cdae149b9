"""SPICE-format HDF5 files (SPICE 1/2, Eastman et al., Sci. Data 10, 11 (2023); OFF23 and other
OpenFF/QCArchive exports in the same layout).

The file holds one HDF5 group per molecule (the group name is an identifier, e.g. a SMILES or a
name); each group has

- ``atomic_numbers`` ``[n]`` integers,
- ``conformations`` ``[C, n, 3]`` positions in Bohr,
- one array ``[C]`` per energy (``dft_total_energy``, ``formation_energy``, ``xtb_total_energy`` ...)
  in Hartree,
- ``dft_total_gradient`` ``[C, n, 3]``, the energy's gradient in Hartree/Bohr,

plus other arrays (``smiles``, ``subset``, charges, dipoles) that are not read. Every conformation
becomes one structure of the store. Units are converted with the zoo's unit table
(:mod:`atomzoo.units`, ASE's CODATA constants): positions Bohr -> Angstrom, energies Hartree -> eV,
and forces = **minus** the gradient, Hartree/Bohr -> eV/A. Where an array carries a ``units``
attribute (SPICE writes ``bohr``, ``hartree``, ``hartree/bohr``), it must be the unit above; any
other is refused with the file, group and key named.

The file is read group by group (bounded memory: one molecule's conformations at a time), so a
file larger than memory builds a store. Conformations of one molecule are separate structures:
random splits put conformations of the same molecule into training and test (the standard SPICE
benchmarks split this way; give a ``--data.split_file`` to keep molecules together).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from atomzoo.units import conversion_factor

from .base import AtomsDataModule, TargetInfo
from .checks import DataFormatError
from .md17 import check_trajectory
from .storage import StoreWriter

#: the units a SPICE-format file's arrays are in (checked against their ``units`` attribute when present)
SOURCE_UNITS = {"positions": "Bohr", "energy": "Hartree", "gradient": "Hartree/Bohr"}
CHUNK_ATOMS = 1_000_000


class SPICEDataModule(AtomsDataModule):
    """Conformations of a SPICE-format HDF5 file, energies in eV and forces in eV/A (see module docstring).

    Args:
        path: the ``.hdf5`` file.
        energy_key: the per-conformation energy array of each group (default ``dft_total_energy``,
            Hartree); its label is named ``energy``.
        gradient_key: the energy's gradient array (default ``dft_total_gradient``, Hartree/Bohr),
            stored as forces = -gradient in eV/A; ``None``: no forces.
        forces: train on the forces (read by the CLI for the regression objective); needs ``gradient_key``.
        **kwargs: :class:`~atomzoo.datamodules.base.AtomsDataModule`'s options.

    Raises:
        ValueError: ``forces=True`` without ``gradient_key``.
        FileNotFoundError: no file at ``path`` (when the store is built).
        atomzoo.datamodules.checks.DataFormatError: a group lacks a key, has mismatched shapes,
            non-finite values, atomic numbers outside 1..100, or a ``units`` attribute other than
            :data:`SOURCE_UNITS`; the message names the file, group and key.
    """

    name = "spice"

    def __init__(self, path: str, energy_key: str = "dft_total_energy", gradient_key: str | None = "dft_total_gradient",
                 forces: bool | None = None, targets: list[str | int] | str | None = None, **kwargs) -> None:  # fmt: skip
        super().__init__(targets=["energy"] if targets is None else targets, **kwargs)
        self.path = Path(path).expanduser()
        self.energy_key, self.gradient_key = energy_key, gradient_key
        forces = gradient_key is not None if forces is None else bool(forces)
        if forces and gradient_key is None:
            raise ValueError("--data.forces true needs --data.gradient_key (the gradient array of each group)")
        #: read by the CLI: the regression objective trains on forces when this is True
        self.forces = forces
        self.force_unit = "eV/A" if gradient_key is not None else None
        self.length = conversion_factor(SOURCE_UNITS["positions"], "length")
        self.hartree = conversion_factor(SOURCE_UNITS["energy"], "energy")
        self.force_factor = conversion_factor(SOURCE_UNITS["gradient"], "force")

    def fingerprint(self) -> dict:
        stat = self.path.stat() if self.path.exists() else None
        return {"dataset": self.name, "file": str(self.path.resolve()), "size": stat.st_size if stat else None,
                "mtime": int(stat.st_mtime) if stat else None, "energy_key": self.energy_key,
                "gradient_key": self.gradient_key}  # fmt: skip

    def store_path(self) -> Path:
        key = f"{self.path.resolve()}|{self.energy_key}|{self.gradient_key}"
        return self.cache_dir / self.name / f"{self.path.stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"

    def label_names(self) -> list[str]:
        return ["energy"]

    def target_info(self, name: str) -> TargetInfo:
        if name != "energy":
            raise ValueError(f"unknown SPICEDataModule target {name!r}; valid: energy (from --data.energy_key)")
        return TargetInfo(name="energy", unit="eV", pooling="sum")

    def _read(self, group, name: str, key: str, unit: str) -> np.ndarray:
        """Array ``key`` of ``group`` (its ``units`` attribute, if any, must be ``unit``)."""
        where = f"{self.path}, group {name!r}"
        if key not in group:
            raise DataFormatError(f"{where}: no array {key!r} (it has {sorted(group.keys())}); set the key option")
        data = group[key]
        stated = data.attrs.get("units")
        if isinstance(stated, bytes):
            stated = stated.decode()
        if stated is not None and str(stated).lower() != unit.lower():
            raise DataFormatError(f"{where}: {key!r} is in {stated!r}, a SPICE-format file has it in {unit}")
        return np.asarray(data[()])

    def build_store(self, path: Path) -> None:
        try:
            import h5py
        except ImportError as err:  # pragma: no cover - the test extra installs it
            raise ImportError("SPICE files are HDF5: pip install h5py (or atomzoo[spice])") from err
        if not self.path.exists():
            raise FileNotFoundError(f"no SPICE file at {self.path} (--data.path)")
        pending: list[tuple] = []
        elements: set[int] = set()
        with h5py.File(self.path, "r") as f, StoreWriter(path, self.fingerprint()) as writer:
            for name in f:
                group = f[name]
                if not isinstance(group, h5py.Group):
                    continue
                z = self._read(group, name, "atomic_numbers", "")
                pos = self._read(group, name, "conformations", SOURCE_UNITS["positions"])
                energy = self._read(group, name, self.energy_key, SOURCE_UNITS["energy"])
                gradient = (self._read(group, name, self.gradient_key, SOURCE_UNITS["gradient"])
                            if self.gradient_key else np.zeros_like(pos))  # fmt: skip
                z, pos, energy, gradient = check_trajectory(Path(f"{self.path} group {name!r}"), z, pos, energy,
                                                            gradient)  # fmt: skip
                elements.update(int(v) for v in np.unique(z))
                pending.append((z, pos, energy, gradient))
                if sum(p[1].shape[0] * p[1].shape[1] for p in pending) >= CHUNK_ATOMS:
                    self._append(writer, pending)
                    pending = []
            if pending:
                self._append(writer, pending)
            writer.describe(["energy"], ["eV"], sorted(elements), force_unit=self.force_unit)
            writer.meta["units"] = {"positions": "A", "energy": "eV", "forces": self.force_unit,
                                    "source_positions": "Bohr", "source_energy": "Hartree",
                                    "source_forces": "-gradient, Hartree/Bohr", "length_factor": self.length,
                                    "energy_factor": self.hartree, "force_factor": self.force_factor}  # fmt: skip
            writer.meta["source"] = str(self.path)

    def _append(self, writer: StoreWriter, groups: list[tuple]) -> None:
        """Write the conformations of ``groups`` (``(z [n], pos [C, n, 3], energy [C], gradient [C, n, 3])``)."""
        z = np.concatenate([np.tile(g[0], g[1].shape[0]) for g in groups]).astype(np.uint8)
        pos = np.concatenate([g[1].reshape(-1, 3) for g in groups]) * self.length
        counts = np.concatenate([np.full(g[1].shape[0], g[1].shape[1], dtype=np.int64) for g in groups])
        atoms = {"z": z, "pos": pos.astype(np.float32)}
        if self.gradient_key:
            atoms["forces"] = (-np.concatenate([g[3].reshape(-1, 3) for g in groups]) * self.force_factor).astype(
                np.float32)  # fmt: skip
        energy = np.concatenate([g[2] for g in groups]).astype(np.float64) * self.hartree
        writer.append(atoms=atoms, counts=counts, molecules={"labels": energy[:, None]})


__all__ = ["SOURCE_UNITS", "SPICEDataModule"]
