"""MD17 (Chmiela et al. 2017, sGDML) and revised MD17 (Christensen & von Lilienfeld 2020).

Both are molecular-dynamics trajectories of one small molecule each with energies and forces. Nothing
is downloaded: place the files and point ``root`` at the folder.

- **MD17** (quantum-machine.org/gdml/#datasets): ``<root>/md17_<molecule>.npz`` (``paracetamol_dft.npz``
  and ``azobenzene_dft.npz`` for those two) with ``R`` [M, N, 3] (A), ``z`` [N], ``E`` [M, 1] (kcal/mol),
  ``F`` [M, N, 3] (kcal/mol/A). Known issue: noisy energies -- prefer rMD17.
- **rMD17** (figshare, doi 10.6084/m9.figshare.12672038): ``<root>/rmd17/npz_data/rmd17_<molecule>.npz``
  with ``nuclear_charges`` [N], ``coords`` [M, N, 3], ``energies`` [M], ``forces`` [M, N, 3] (same
  units), plus official splits ``<root>/rmd17/splits/index_{train,test}_0K.csv`` (K = 1..5, 1,000 indices
  each). ``root`` may also be the ``rmd17`` folder itself.

Units: energies and forces are converted to eV and eV/A by default (``units="eV"``; 1 kcal/mol =
0.0433641 eV from the zoo's unit table, :mod:`atomzoo.units`, with ASE's CODATA 2018 constants), or
kept in kcal/mol (``units="kcal/mol"``). The units and the factor used are recorded in the store's
``meta.json`` (``"units"``).

Labels: ``"energy"`` (per-molecule, pooling sum) and the per-atom ``forces`` array, which every
batch carries as ``batch.forces`` [N, 3]; ``forces=True`` (the default) asks the linked regression
objective to train on forces = -dE/dpos.

Splits: by default the common 950 train / 50 val / rest test, from a seeded permutation
(``split_seed``). For rMD17, ``official_split=K`` uses ``index_train_0K.csv`` / ``index_test_0K.csv``:
validation is the last ``num_val`` (default 50) indices of a seeded permutation of the official train
indices, training the remaining ones (950), and test is the official test file (1,000 frames).
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from pathlib import Path

import numpy as np
from atomzoo.units import conversion_factor

from .base import AtomsDataModule, TargetInfo
from .checks import DataFormatError, check_atomic_numbers, check_finite
from .storage import StoreWriter

log = logging.getLogger(__name__)

#: kcal/mol -> eV with CODATA 2018 (what the MD17 stores have always used; ASE's default set differs by 1e-8)
KCALMOL_EV = conversion_factor("kcal/mol", "energy", codata="2018")

#: MD17 molecule name -> file name in the quantum-machine.org release.
MD17_FILES = {
    "aspirin": "md17_aspirin.npz",
    "benzene": "md17_benzene2017.npz",
    "benzene2017": "md17_benzene2017.npz",
    "benzene_old": "md17_benzene.npz",
    "ethanol": "md17_ethanol.npz",
    "malonaldehyde": "md17_malonaldehyde.npz",
    "naphthalene": "md17_naphthalene.npz",
    "salicylic": "md17_salicylic.npz",
    "toluene": "md17_toluene.npz",
    "uracil": "md17_uracil.npz",
    "paracetamol": "paracetamol_dft.npz",
    "azobenzene": "azobenzene_dft.npz",
}
RMD17_MOLECULES = (
    "aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde",
    "naphthalene", "paracetamol", "salicylic", "toluene", "uracil",
)  # fmt: skip
MD17_URL = "http://quantum-machine.org/gdml/#datasets"
RMD17_URL = "https://figshare.com/articles/dataset/Revised_MD17_dataset_rMD17_/12672038"
CHUNK_FRAMES = 10_000


def load_npz(path: Path, keys: dict[str, str], source_hint: str) -> dict[str, np.ndarray]:
    """Arrays ``keys`` (wanted name -> key in the file) of ``path``, with clear errors."""
    if not path.exists():
        raise FileNotFoundError(f"expected {path}; {source_hint}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in keys.values() if k not in f.files]
            if missing:
                raise DataFormatError(f"{path} lacks key(s) {missing}; it has {sorted(f.files)}")
            return {name: np.asarray(f[key]) for name, key in keys.items()}
    except DataFormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataFormatError(f"{path} is not a readable .npz file (truncated or another format?): {err}") from err


def check_trajectory(path: Path, z, pos, energy, forces) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shapes and values of one trajectory; returns ``z`` [N], ``pos`` [M,N,3], ``energy`` [M], ``forces``."""
    z = np.asarray(z).reshape(-1) if np.asarray(z).ndim <= 1 else np.asarray(z)
    if z.ndim != 1 or z.size == 0:
        raise DataFormatError(f"{path}: atomic numbers must be a non-empty vector [N], got shape {np.shape(z)}")
    n = z.size
    if pos.ndim != 3 or pos.shape[1:] != (n, 3):
        raise DataFormatError(f"{path}: positions have shape {pos.shape}, expected [M, {n}, 3] for {n} atoms")
    m = pos.shape[0]
    if m == 0:
        raise DataFormatError(f"{path}: the trajectory has no frames")
    energy = np.asarray(energy)
    if energy.shape not in ((m,), (m, 1)):
        raise DataFormatError(f"{path}: energies have shape {energy.shape}, expected [{m}] or [{m}, 1]")
    if forces.shape != pos.shape:
        raise DataFormatError(f"{path}: forces have shape {forces.shape}, positions {pos.shape}; they must match")
    check_atomic_numbers(z, str(path))
    check_finite(pos, "positions", str(path))
    check_finite(energy.reshape(m, -1), "energy", str(path))
    check_finite(forces, "forces", str(path))
    return z.astype(np.int64), pos, energy.reshape(m).astype(np.float64), forces


class _TrajectoryDataModule(AtomsDataModule):
    """Shared part of MD17 and rMD17: one molecule's frames with energy and forces."""

    name = "md17"
    source_url = MD17_URL

    def __init__(
        self,
        root: str,
        molecule: str,
        targets: list[str | int] | str | None = None,
        forces: bool = True,
        units: str = "eV",
        batch_size: int = 10,
        eval_batch_size: int | None = 100,
        num_train: int | float = 950,
        num_val: int | float = 50,
        **kwargs,
    ) -> None:
        super().__init__(
            targets=["energy"] if targets is None else targets,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_train=num_train,
            num_val=num_val,
            **kwargs,
        )
        if units not in ("eV", "kcal/mol"):
            raise ValueError(f"units={units!r}: choose 'eV' (eV, eV/A) or 'kcal/mol' (kcal/mol, kcal/mol/A)")
        self.root = Path(root).expanduser()
        self.molecule = molecule
        #: read by the CLI: the regression objective trains on forces when this is True
        self.forces = bool(forces)
        self.units = units
        self.factor = KCALMOL_EV if units == "eV" else 1.0
        self.energy_unit = "eV" if units == "eV" else "kcal/mol"
        self.force_unit = f"{self.energy_unit}/A"

    # subclasses: raw_file() and read_raw()
    def raw_file(self) -> Path:
        raise NotImplementedError

    def read_raw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def fingerprint(self) -> dict:
        path = self.raw_file()
        stat = path.stat() if path.exists() else None
        return {
            "dataset": self.name,
            "file": str(path.resolve()),
            "size": stat.st_size if stat else None,
            "mtime": int(stat.st_mtime) if stat else None,
            "units": self.units,
        }

    def store_path(self) -> Path:
        path = self.raw_file()
        digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
        unit = "ev" if self.units == "eV" else "kcalmol"
        return self.cache_dir / self.name / f"{self.molecule}-{unit}-{digest}"

    def build_store(self, path: Path) -> None:
        z, pos, energy, forces = self.read_raw()
        m, n = pos.shape[:2]
        with StoreWriter(path, self.fingerprint()) as writer:
            for start in range(0, m, CHUNK_FRAMES):
                stop = min(m, start + CHUNK_FRAMES)
                k = stop - start
                writer.append(
                    atoms={
                        "z": np.tile(z.astype(np.uint8), k),
                        "pos": pos[start:stop].reshape(-1, 3).astype(np.float32),
                        "forces": (forces[start:stop].reshape(-1, 3) * self.factor).astype(np.float32),
                    },
                    counts=np.full(k, n, dtype=np.int64),
                    molecules={
                        "labels": (energy[start:stop] * self.factor)[:, None].astype(np.float64),
                        "frame": np.arange(start, stop, dtype=np.int64),
                    },
                )
            writer.describe(["energy"], [self.energy_unit], np.unique(z).tolist(), force_unit=self.force_unit)
            writer.meta["units"] = {
                "positions": "A",
                "energy": self.energy_unit,
                "forces": self.force_unit,
                "source_energy": "kcal/mol",
                "source_forces": "kcal/mol/A",
                "factor": self.factor,
            }
            writer.meta["source"] = str(self.raw_file())
            writer.meta["molecule"] = self.molecule

    def label_names(self) -> list[str]:
        return ["energy"]

    def target_info(self, name: str) -> TargetInfo:
        if name != "energy":
            raise ValueError(f"unknown {type(self).__name__} target {name!r}; valid: energy (forces are per-atom)")
        return TargetInfo(name="energy", unit=self.energy_unit, pooling="sum")


class MD17DataModule(_TrajectoryDataModule):
    """Original MD17: ``<root>/md17_<molecule>.npz`` (see module docstring).

    Args:
        root: folder holding the ``.npz`` files.
        molecule: aspirin, benzene (= benzene2017), benzene_old, ethanol, malonaldehyde, naphthalene,
            salicylic, toluene, uracil, paracetamol, azobenzene.
        targets: ``["energy"]`` (the only per-molecule label).
        forces: train on forces (linked to ``--model.init_args.forces`` by the CLI).
        units: ``"eV"`` (convert; default) or ``"kcal/mol"`` (as stored).
        num_train, num_val, num_test: default 950 / 50 / the rest (seeded, ``split_seed``).
        Other arguments: see :class:`~atomzoo.datamodules.base.AtomsDataModule`.
    """

    name = "md17"

    def raw_file(self) -> Path:
        if self.molecule not in MD17_FILES:
            raise ValueError(f"unknown MD17 molecule {self.molecule!r}; choose one of {', '.join(MD17_FILES)}")
        return self.root / MD17_FILES[self.molecule]

    def read_raw(self):
        path = self.raw_file()
        hint = f"download {path.name} from {MD17_URL} and place it in {self.root}"
        d = load_npz(path, {"z": "z", "pos": "R", "energy": "E", "forces": "F"}, hint)
        return check_trajectory(path, d["z"], d["pos"], d["energy"], d["forces"])


def read_index_csv(path: Path) -> np.ndarray:
    """Integer indices of an rMD17 split file (one per line; blank lines and a header are ignored)."""
    if not path.exists():
        raise FileNotFoundError(f"expected rMD17 split file {path}; it comes with rmd17.tar.bz2 from {RMD17_URL}")
    values = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        token = line.strip().split(",")[0].strip()
        if not token:
            continue
        try:
            values.append(int(float(token)))
        except ValueError:
            if values:  # only a first-line header is tolerated
                raise DataFormatError(f"{path}: line {lineno} is not an integer index: {line!r}") from None
    return np.asarray(values, dtype=np.int64)


class RMD17DataModule(_TrajectoryDataModule):
    """Revised MD17: ``<root>/rmd17/npz_data/rmd17_<molecule>.npz`` (see module docstring).

    Args:
        root: folder containing ``rmd17/`` (or the ``rmd17`` folder itself).
        molecule: aspirin, azobenzene, benzene, ethanol, malonaldehyde, naphthalene, paracetamol,
            salicylic, toluene, uracil.
        official_split: ``K`` in 1..5 to use ``rmd17/splits/index_{train,test}_0K.csv``: the official
            test indices are the test split; ``num_val`` (default 50) indices are carved from the official
            train indices by a seeded permutation (``split_seed``) for validation, the rest (950) train.
            ``None``: the seeded 950 / 50 / rest split over all frames.
        Other arguments: see :class:`MD17DataModule`.
    """

    name = "rmd17"
    source_url = RMD17_URL

    def __init__(
        self,
        root: str,
        molecule: str,
        official_split: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(root=root, molecule=molecule, **kwargs)
        if official_split is not None and official_split not in (1, 2, 3, 4, 5):
            raise ValueError(f"official_split={official_split!r}: choose 1..5 or None")
        self.official_split = official_split

    def rmd17_dir(self) -> Path:
        return self.root if self.root.name == "rmd17" and not (self.root / "rmd17").exists() else self.root / "rmd17"

    def raw_file(self) -> Path:
        if self.molecule not in RMD17_MOLECULES:
            raise ValueError(f"unknown rMD17 molecule {self.molecule!r}; choose one of {', '.join(RMD17_MOLECULES)}")
        return self.rmd17_dir() / "npz_data" / f"rmd17_{self.molecule}.npz"

    def read_raw(self):
        path = self.raw_file()
        hint = f"download rmd17.tar.bz2 from {RMD17_URL} and extract it in {self.root}"
        keys = {"z": "nuclear_charges", "pos": "coords", "energy": "energies", "forces": "forces"}
        d = load_npz(path, keys, hint)
        return check_trajectory(path, d["z"], d["pos"], d["energy"], d["forces"])

    def _make_splits(self) -> dict[str, np.ndarray]:
        if self.official_split is None or self.split_file:
            return super()._make_splits()
        total = len(self.store)
        folder = self.rmd17_dir() / "splits"
        train_file = folder / f"index_train_0{self.official_split}.csv"
        test_file = folder / f"index_test_0{self.official_split}.csv"
        train_all, test = read_index_csv(train_file), read_index_csv(test_file)
        for file, idx in ((train_file, train_all), (test_file, test)):
            if idx.size and (idx.min() < 0 or idx.max() >= total):
                bad = int(idx[(idx < 0) | (idx >= total)][0])
                raise ValueError(f"{file}: index {bad} is out of range for the {total} frames of {self.raw_file()}")
        n_val = int(round(self.num_val * train_all.size)) if isinstance(self.num_val, float) else int(self.num_val)
        if not 0 <= n_val < train_all.size:
            raise ValueError(f"num_val={self.num_val} must be smaller than the {train_all.size} official train indices")
        perm = train_all[np.random.default_rng(self.split_seed).permutation(train_all.size)]
        splits = self._apply_train_size({"train": perm[: perm.size - n_val], "val": perm[perm.size - n_val :], "test": test})
        log.info("rMD17 official split %d: %d train / %d val / %d test", self.official_split,
                 splits["train"].size, splits["val"].size, splits["test"].size)  # fmt: skip
        return splits
