"""Time-ordered molecular-dynamics trajectories as windows of frames, for world models.

Files (``path``: one file, a list of files, or a folder whose ``*.traj``, ``*.xyz``, ``*.extxyz`` and
``*.npz`` files are read in sorted order):

* ``.traj`` (ASE trajectory): one trajectory per file. The time step between saved frames and the
  thermostat temperature are read from the header ASE's molecular dynamics writes
  (``Langevin(..., trajectory=..., loginterval=n)``: ``description["timestep"]`` in ASE time units
  times ``description["interval"]``, and ``description["temperature_K"]``).
* extended XYZ (``.xyz`` / ``.extxyz``) whose frame order is time. Per-frame comment-line keys:
  ``time`` (fs; then the time step is its constant difference, and time must increase),
  ``temperature_K`` (the thermostat's, constant within a trajectory) and ``trajectory`` (an id:
  consecutive frames with the same id form one trajectory, so one file can hold several). Without
  ``trajectory`` the file is one trajectory.
* MD17's original ``.npz`` (sGDML layout: ``R`` [M, N, 3] A, ``z`` [N], ``E`` [M, 1] kcal/mol, ``F``
  [M, N, 3] kcal/mol/A): its frames are consecutive MD steps. rMD17 files (``nuclear_charges``,
  ``coords``, ``old_indices``) are refused: their frames are a random subsample of MD17, not a
  trajectory. MD17 files record no time step (the MD17 paper samples every 0.5 fs) or temperature.

What a file does not record must be given: ``time_step`` (fs) and ``temperature`` (K); a value that
contradicts the file is refused. Energies and forces are kept (eV, eV/A; MD17's kcal/mol converted
with :data:`atomzoo.datamodules.md17.KCALMOL_EV`) when every frame of every file has them: the label
``energy`` and the per-atom ``forces`` array, for probes; the world model does not use them.
Every trajectory must keep its atoms (same elements in the same order) in every frame.

Samples are windows. For history ``h`` (``history``), history stride ``s`` (``history_stride``,
frames) and horizon ``k`` (``horizons``, frames; several values give one window per value) a
window ending at frame ``t`` holds the frames ``t - (h-1)s, ..., t - s, t`` (history, oldest first)
and ``t + k`` (target). Its span, first to last frame, is ``(h-1)s + k`` frames.

Splits (``split``), never with neighbouring frames on both sides:

* ``"trajectory"`` (default): whole trajectories go to train / val / test (a seeded permutation;
  ``num_train`` / ``num_val`` / ``num_test`` count or fraction of trajectories).
* ``"time"``: every trajectory is cut into contiguous blocks, train first, then validation, then
  test (``num_train`` / ``num_val`` / ``num_test``: fractions of each trajectory's frames), with
  ``gap`` unused frames between blocks (default, and minimum, the largest window span). A window
  belongs to a block only if all its frames lie in it.

A random split of windows would leak: overlapping windows share frames, so test targets would be
training frames (``tests/test_trajectory.py`` shows it on the fixture). ``split_file`` is refused
(the split is defined by trajectories or time blocks); ``train_size`` keeps that many training
windows (a seeded choice). ``self.splits`` holds, per split, the store rows (frames) its windows
use, so the base class's element checks and statistics see exactly those frames; the windows
themselves are :meth:`TrajectoryDataModule.windows`.

A batch of ``W`` windows of ``P = h + 1`` frames is ONE PyG batch of ``G = W * P`` frames (graphs), in
window-major order (graph ``g`` is frame ``g % P`` of window ``g // P``), with every field of
:mod:`atomzoo.datamodules.base` (``z``, ``pos``, ``batch``, ``ptr``, ``idx`` = store row, ``y`` and
``forces`` when present) plus the window structure:

* ``window`` ``[G]`` long: the window of each frame, ``0 .. W-1``;
* ``window_position`` ``[G]`` long: ``0 .. h-1`` history (oldest first), ``h`` the target;
* ``horizon`` ``[W]`` float32: the target's distance from the last history frame, ``k * dt``, in fs;
* ``temperature`` ``[W]`` float32: the trajectory's thermostat temperature, K;
* ``trajectory`` ``[W]`` long: the trajectory's number in :attr:`TrajectoryDataModule.trajectory_ids`;
* ``time`` ``[W]`` float32: the time of the last history frame ``t`` in its trajectory, fs.

``batch_size`` counts windows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from atomzoo.nn.batch import structure_arrays

from .ase_file import _lookup
from .base import AtomsDataModule, StoreDataset, TargetInfo
from .checks import DataFormatError, check_atomic_numbers, check_finite
from .loaders import BatchItems
from .md17 import KCALMOL_EV, load_npz
from .splits import resolve_size
from .storage import StoreWriter

#: file suffixes read from a folder, and the reader of each
SUFFIXES = (".traj", ".xyz", ".extxyz", ".npz")
#: extxyz per-frame keys: trajectory id, time (fs), thermostat temperature (K)
TRAJECTORY_KEY, TIME_KEY, TEMPERATURE_KEY = "trajectory", "time", "temperature_K"


@dataclasses.dataclass
class Trajectory:
    """One time-ordered trajectory as read from a file (frames ``M``, atoms ``n``).

    ``z`` ``[n]`` int64; ``pos`` ``[M, n, 3]`` A; ``time_step`` fs between consecutive frames;
    ``temperature`` K (thermostat); ``energy`` ``[M]`` eV and ``forces`` ``[M, n, 3]`` eV/A, or None;
    ``cell`` ``[M, 3, 3]`` A and ``pbc`` ``[M, 3]``, or None for free molecules.
    """

    id: str
    source: str
    z: np.ndarray
    pos: np.ndarray
    time_step: float
    temperature: float
    energy: np.ndarray | None = None
    forces: np.ndarray | None = None
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.pos.shape[0])


def _settle(recorded: float | None, option: float | None, what: str, option_name: str, unit: str, where: str) -> float:
    """The value the file records, else the option; an error if neither or if they disagree."""
    if recorded is None and option is None:
        raise DataFormatError(
            f"{where}: the file does not record the {what}; give it with --data.init_args.{option_name} ({unit})"
        )
    if recorded is not None and option is not None and not math.isclose(recorded, option, rel_tol=1e-6):
        raise DataFormatError(
            f"{where}: the file records a {what} of {recorded:g} {unit} but --data.init_args.{option_name} is "
            f"{option:g}; drop the option (the file's value is used) or correct it"
        )
    value = float(recorded if recorded is not None else option)
    if not value > 0:
        raise DataFormatError(f"{where}: the {what} must be positive, got {value:g} {unit}")
    return value


def _from_frames(frames: list, tid: str, where: str, time_step: float | None, temperature: float | None,
                 recorded_step: float | None = None, recorded_temperature: float | None = None) -> Trajectory:
    """A :class:`Trajectory` from ASE ``Atoms`` frames in time order (checks atoms, times, labels)."""
    if not frames:
        raise DataFormatError(f"{where}: trajectory {tid!r} has no frames")
    z0, _, _, _ = structure_arrays(frames[0])
    check_atomic_numbers(z0, where)
    pos, cells, pbcs, energy, forces = [], [], [], [], []
    for k, atoms in enumerate(frames):
        z, p, cell, pbc = structure_arrays(atoms)
        if z.shape != z0.shape or not np.array_equal(z, z0):
            raise DataFormatError(
                f"{where}: trajectory {tid!r} changes its atoms at frame {k} ({z0.size} -> {z.size} atoms or another "
                "order); a trajectory must keep the same atoms in the same order"
            )
        pos.append(p)
        cells.append(cell)
        pbcs.append(pbc)
        e, f = _lookup(atoms, "energy", per_atom=False), _lookup(atoms, "forces", per_atom=True)
        energy.append(None if e is None else float(np.asarray(e, dtype=np.float64).reshape(-1)[0]))
        forces.append(None if f is None else np.asarray(f, dtype=np.float64))
    pos = np.stack(pos)
    check_finite(pos, "positions", where)
    pbc = np.stack(pbcs)
    periodic = bool(pbc.any())

    times = [atoms.info.get(TIME_KEY) for atoms in frames]
    if any(t is not None for t in times):
        if any(t is None for t in times):
            first = times.index(None)
            raise DataFormatError(f"{where}: trajectory {tid!r}: frame {first} has no '{TIME_KEY}' but others do")
        steps = np.diff(np.asarray(times, dtype=np.float64))
        if steps.size:
            if not (steps > 0).all():
                bad = int(np.flatnonzero(steps <= 0)[0]) + 1
                raise DataFormatError(
                    f"{where}: trajectory {tid!r}: '{TIME_KEY}' does not increase at frame {bad} "
                    f"({times[bad - 1]} -> {times[bad]} fs); frames must be in time order"
                )
            if not np.allclose(steps, steps[0], rtol=1e-4, atol=1e-6):
                bad = int(np.flatnonzero(~np.isclose(steps, steps[0], rtol=1e-4, atol=1e-6))[0]) + 1
                raise DataFormatError(
                    f"{where}: trajectory {tid!r}: frames are not equally spaced in time (step {steps[0]:g} fs, "
                    f"then {steps[bad - 1]:g} fs before frame {bad}); windows need a constant time step"
                )
            recorded_step = float(steps.mean())
    temps = {float(atoms.info[TEMPERATURE_KEY]) for atoms in frames if TEMPERATURE_KEY in atoms.info}
    if len(temps) > 1:
        raise DataFormatError(f"{where}: trajectory {tid!r} has several '{TEMPERATURE_KEY}' values {sorted(temps)}; "
                              "one thermostat temperature per trajectory")  # fmt: skip
    if temps:
        recorded_temperature = temps.pop()
    has_energy = all(e is not None for e in energy)
    has_forces = all(f is not None for f in forces)
    if has_forces:
        forces_array = np.stack(forces)
        if forces_array.shape != pos.shape:
            raise DataFormatError(f"{where}: trajectory {tid!r}: forces have shape {forces_array.shape}, "
                                  f"positions {pos.shape}")  # fmt: skip
        check_finite(forces_array, "forces", where)
    return Trajectory(
        id=tid,
        source=where,
        z=z0.astype(np.int64),
        pos=pos,
        time_step=_settle(recorded_step, time_step, "time step between frames", "time_step", "fs", f"{where} ({tid})"),
        temperature=_settle(recorded_temperature, temperature, "thermostat temperature", "temperature", "K",
                            f"{where} ({tid})"),  # fmt: skip
        energy=np.asarray(energy, dtype=np.float64) if has_energy else None,
        forces=forces_array if has_forces else None,
        cell=np.stack(cells) if periodic else None,
        pbc=pbc if periodic else None,
    )


def read_ase_trajectory(path: Path, time_step: float | None, temperature: float | None) -> list[Trajectory]:
    """The one trajectory of an ASE ``.traj`` file (time step and temperature from its MD header)."""
    from ase import units
    from ase.io.trajectory import Trajectory as ASETrajectory

    try:
        with ASETrajectory(str(path)) as reader:
            description = dict(getattr(reader, "description", None) or {})
            frames = list(reader)
    except Exception as err:  # ASE raises many types for malformed files
        raise DataFormatError(f"{path}: ASE could not read it as a trajectory: {type(err).__name__}: {err}") from err
    step = None
    if "timestep" in description:
        step = float(description["timestep"]) * float(description.get("interval", 1)) / units.fs
    temp = description.get("temperature_K")
    return [_from_frames(frames, path.stem, str(path), time_step, temperature, step,
                         None if temp is None else float(temp))]  # fmt: skip


def read_extxyz(path: Path, time_step: float | None, temperature: float | None) -> list[Trajectory]:
    """The trajectories of an extended XYZ file: consecutive frames with the same ``trajectory`` id."""
    from ase.io import iread

    groups: list[tuple[str, list]] = []
    seen: set[str] = set()
    record = -1
    try:
        for record, atoms in enumerate(iread(str(path), index=":", format="extxyz")):
            key = atoms.info.get(TRAJECTORY_KEY)
            key = None if key is None else str(key)
            if groups and (key is None) != (groups[-1][0] is None):
                raise DataFormatError(f"{path}: frame {record} {'lacks' if key is None else 'has'} a "
                                      f"'{TRAJECTORY_KEY}' id and frame {record - 1} does not; give every frame one "
                                      "or none")  # fmt: skip
            if groups and groups[-1][0] == key:
                groups[-1][1].append(atoms)
                continue
            if key in seen:
                raise DataFormatError(
                    f"{path}: trajectory {key!r} continues at frame {record} after another trajectory; the frames of "
                    "one trajectory must be consecutive (in time order)"
                )
            seen.add(key)
            groups.append((key, [atoms]))
    except DataFormatError:
        raise
    except Exception as err:
        raise DataFormatError(f"{path}: ASE could not read frame {record + 1} as extended XYZ: "
                              f"{type(err).__name__}: {err}") from err  # fmt: skip
    if not groups:
        raise DataFormatError(f"{path}: no frames")
    return [_from_frames(frames, path.stem if key is None else f"{path.stem}:{key}", str(path), time_step, temperature)
            for key, frames in groups]  # fmt: skip


def read_md17_npz(path: Path, time_step: float | None, temperature: float | None) -> list[Trajectory]:
    """The one trajectory of an original MD17 ``.npz`` (sGDML layout); rMD17 files are refused."""
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            units = {k: str(f[k]) for k in ("e_unit", "r_unit") if k in keys}
    except (ValueError, OSError, EOFError) as err:
        raise DataFormatError(f"{path} is not a readable .npz file: {err}") from err
    if {"nuclear_charges", "coords"} <= keys or "old_indices" in keys:
        raise DataFormatError(
            f"{path} is an rMD17 file, whose frames are a random subsample of MD17 and not time-ordered, so it holds "
            "no trajectory; use the original MD17 file (md17_<molecule>.npz: R, z, E, F) or RMD17DataModule"
        )
    if units.get("e_unit", "kcal/mol") != "kcal/mol" or units.get("r_unit", "Ang") != "Ang":
        raise DataFormatError(f"{path}: units {units}; the MD17 layout has e_unit 'kcal/mol' and r_unit 'Ang'")
    from .md17 import check_trajectory

    d = load_npz(path, {"z": "z", "pos": "R", "energy": "E", "forces": "F"}, "an MD17 file (md17_<molecule>.npz)")
    z, pos, energy, forces = check_trajectory(path, d["z"], np.asarray(d["pos"], dtype=np.float64), d["energy"],
                                              np.asarray(d["forces"], dtype=np.float64))  # fmt: skip
    where = f"{path} ({path.stem})"
    return [Trajectory(
        id=path.stem, source=str(path), z=z, pos=pos,
        time_step=_settle(None, time_step, "time step between frames (MD17: 0.5 fs)", "time_step", "fs", where),
        temperature=_settle(None, temperature, "thermostat temperature (MD17: 500 K)", "temperature", "K", where),
        energy=energy * KCALMOL_EV, forces=forces * KCALMOL_EV,
    )]  # fmt: skip


READERS = {".traj": read_ase_trajectory, ".xyz": read_extxyz, ".extxyz": read_extxyz, ".npz": read_md17_npz}


def trajectory_files(path: str | list[str]) -> list[Path]:
    """The files ``path`` names: itself, each of a list, or the trajectory files of a folder (sorted)."""
    items = [path] if isinstance(path, (str, Path)) else list(path)
    if not items:
        raise ValueError("--data.init_args.path is empty: give a trajectory file, a list of files or a folder")
    files: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in SUFFIXES)
            if not found:
                raise FileNotFoundError(f"folder {p} holds no trajectory files ({', '.join(SUFFIXES)})")
            files += found
        elif p.exists():
            if p.suffix not in SUFFIXES:
                raise ValueError(f"{p}: unknown trajectory format {p.suffix!r}; read are {', '.join(SUFFIXES)}")
            files.append(p)
        else:
            raise FileNotFoundError(f"trajectory file {p} does not exist (--data.init_args.path)")
    return files


def read_trajectories(files: list[Path], time_step: float | None, temperature: float | None):
    """Yield every :class:`Trajectory` of ``files``, one file at a time."""
    for file in files:
        yield from READERS[file.suffix](file, time_step, temperature)


class WindowDataset(torch.utils.data.Dataset):
    """Windows of frames of a trajectory store, collated into one PyG batch (module docstring).

    Args:
        store: the trajectory store; ``windows`` ``[W, P]`` int64 store rows (history oldest first,
            then the target); ``horizon`` ``[W]`` fs, ``temperature`` ``[W]`` K, ``trajectory`` ``[W]``,
            ``time`` ``[W]`` fs of the last history frame; ``label_columns`` as for
            :class:`~atomzoo.datamodules.base.StoreDataset`.
    """

    def __init__(self, store, windows: np.ndarray, horizon: np.ndarray, temperature: np.ndarray,
                 trajectory: np.ndarray, time: np.ndarray, label_columns: list[int] | None) -> None:  # fmt: skip
        self.windows = np.asarray(windows, dtype=np.int64)
        self.horizon, self.temperature = np.asarray(horizon, np.float32), np.asarray(temperature, np.float32)
        self.trajectory, self.time = np.asarray(trajectory, np.int64), np.asarray(time, np.float32)
        self.frames = StoreDataset(store, np.arange(len(store)), label_columns)

    def __len__(self) -> int:
        return int(self.windows.shape[0])

    def __getitem__(self, i: int) -> Batch:
        """Window ``i`` alone, as a batch of one window."""
        return self.collate([i])

    def __getitems__(self, positions: list[int]) -> BatchItems:
        return BatchItems(self, positions)

    def collate(self, positions) -> Batch:
        """The windows at ``positions``: one PyG batch of their ``W * P`` frames plus the window fields."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        w, p = positions.size, self.windows.shape[1]
        batch = self.frames.collate(self.windows[positions].reshape(-1))
        batch.window = torch.arange(w).repeat_interleave(p)
        batch.window_position = torch.arange(p).repeat(w)
        batch.horizon = torch.from_numpy(self.horizon[positions])
        batch.temperature = torch.from_numpy(self.temperature[positions])
        batch.trajectory = torch.from_numpy(self.trajectory[positions])
        batch.time = torch.from_numpy(self.time[positions])
        return batch


class TrajectoryDataModule(AtomsDataModule):
    """Windows of time-ordered MD trajectories (module docstring: formats, windows, splits, batch layout).

    Args:
        path: a trajectory file (``.traj``, ``.xyz``/``.extxyz``, MD17 ``.npz``), a list of them, or a folder.
        time_step: fs between consecutive frames, for files that do not record it (required then).
        temperature: thermostat temperature in K, for files that do not record it (required then).
        history: history frames ``h`` per window (>= 1; LeWorldModel: 3).
        horizons: horizon ``k`` in frames after the last history frame (>= 1), or a list (one window
            per value and end frame).
        history_stride: frames between consecutive history frames (>= 1).
        split: ``"trajectory"`` or ``"time"``.
        gap: frames left out between time blocks (``split="time"``); default and minimum: the
            largest window span ``(h-1) * history_stride + max(horizons)``.
        num_train, num_val, num_test: ``"trajectory"``: counts or fractions of trajectories;
            ``"time"``: fractions of each trajectory's frames (``num_test=None``: the rest).
        targets: ``["energy"]`` or ``None`` (default: none; the world model needs no labels).
        batch_size, eval_batch_size: windows per batch.
        Other arguments: see :class:`~atomzoo.datamodules.base.AtomsDataModule` (``split_file`` is refused).

    Raises:
        ValueError: bad options (each names its ``--data.init_args`` option); ``DataFormatError`` for
        files that are not trajectories (an rMD17 file, frames out of time order, changing atoms).
    """

    name = "trajectory"

    def __init__(
        self,
        path: str | list[str],
        time_step: float | None = None,
        temperature: float | None = None,
        history: int = 3,
        horizons: int | list[int] = 1,
        history_stride: int = 1,
        split: str = "trajectory",
        gap: int | None = None,
        num_train: int | float = 0.8,
        num_val: int | float = 0.1,
        num_test: int | float | None = None,
        targets: list[str] | str | None = None,
        batch_size: int = 32,
        **kwargs,
    ) -> None:
        if kwargs.get("split_file"):
            raise ValueError("TrajectoryDataModule splits by trajectory or time block (--data.init_args.split); "
                             "--data.init_args.split_file is not supported")  # fmt: skip
        super().__init__(targets=targets, batch_size=batch_size, num_train=num_train, num_val=num_val,
                         num_test=num_test, **kwargs)  # fmt: skip
        self.path = path
        self.time_step = None if time_step is None else float(time_step)
        self.temperature = None if temperature is None else float(temperature)
        self.horizons = sorted({int(k) for k in ([horizons] if isinstance(horizons, (int, float)) else horizons)})
        if int(history) < 1 or int(history_stride) < 1 or not self.horizons or self.horizons[0] < 1:
            raise ValueError(f"need history >= 1, history_stride >= 1 and horizons >= 1 (frames), got "
                             f"history={history}, history_stride={history_stride}, horizons={horizons} "
                             "(--data.init_args.history / history_stride / horizons)")  # fmt: skip
        self.history, self.history_stride = int(history), int(history_stride)
        if split not in ("trajectory", "time"):
            raise ValueError(f"split={split!r}: choose 'trajectory' or 'time' (--data.init_args.split)")
        self.split = split
        self.span = (self.history - 1) * self.history_stride + self.horizons[-1]
        if gap is not None and int(gap) < self.span:
            raise ValueError(
                f"gap={gap} frames is shorter than the window span {self.span} = (history-1) * history_stride + "
                f"max(horizons): frames next to a block boundary would neighbour the other split; "
                f"use --data.init_args.gap >= {self.span}"
            )
        self.gap = self.span if gap is None else int(gap)
        self._windows: dict[str, dict[str, np.ndarray]] | None = None

    # ----- the store ----------------------------------------------------------------------------
    def files(self) -> list[Path]:
        return trajectory_files(self.path)

    def fingerprint(self) -> dict:
        files = self.files()
        return {
            "dataset": "trajectory",
            "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
            "time_step": self.time_step,
            "temperature": self.temperature,
        }

    def store_path(self) -> Path:
        digest = hashlib.sha1(json.dumps(self.fingerprint(), sort_keys=True).encode()).hexdigest()[:12]
        return self.cache_dir / "trajectory" / f"{self.files()[0].stem}-{digest}"

    def build_store(self, path: Path) -> None:
        files = self.files()
        trajectories = list(read_trajectories(files, self.time_step, self.temperature))
        ids = [t.id for t in trajectories]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DataFormatError(f"trajectory ids {dup} occur twice in {[str(f) for f in files]}; rename the files")
        with_energy = all(t.energy is not None for t in trajectories)
        with_forces = all(t.forces is not None for t in trajectories)
        periodic = any(t.cell is not None for t in trajectories)
        table, elements, start = [], set(), 0
        with StoreWriter(path, self.fingerprint()) as writer:
            for number, t in enumerate(trajectories):
                m, n = t.pos.shape[:2]
                atoms = {"z": np.tile(t.z.astype(np.uint8), m), "pos": t.pos.reshape(-1, 3).astype(np.float32)}
                if with_forces:
                    atoms["forces"] = t.forces.reshape(-1, 3).astype(np.float32)
                molecules = {
                    "trajectory": np.full(m, number, dtype=np.int64),
                    "frame": np.arange(m, dtype=np.int64),
                    "time": np.arange(m, dtype=np.float64) * t.time_step,
                }
                if with_energy:
                    molecules["labels"] = t.energy[:, None].astype(np.float64)
                if periodic:
                    molecules["cell"] = (t.cell if t.cell is not None else np.zeros((m, 3, 3))).astype(np.float64)
                    molecules["pbc"] = (t.pbc if t.pbc is not None else np.zeros((m, 3), bool)).astype(np.uint8)
                writer.append(atoms=atoms, counts=np.full(m, n, dtype=np.int64), molecules=molecules)
                elements.update(int(v) for v in t.z)
                table.append({"id": t.id, "source": t.source, "first_row": start, "frames": m,
                              "time_step_fs": t.time_step, "temperature_K": t.temperature})  # fmt: skip
                start += m
            writer.describe(["energy"] if with_energy else [], ["eV"] if with_energy else [], sorted(elements),
                            force_unit="eV/A" if with_forces else None)  # fmt: skip
            writer.meta["units"] = {"positions": "A", "energy": "eV", "forces": "eV/A", "time": "fs"}
            writer.meta["trajectories"] = table

    def label_names(self) -> list[str]:
        return ["energy"]

    def target_info(self, name: str) -> TargetInfo:
        if name != "energy":
            raise ValueError(f"unknown TrajectoryDataModule target {name!r}; valid: energy (when the files have it)")
        return TargetInfo(name="energy", unit="eV", pooling="sum")

    @property
    def trajectory_table(self) -> list[dict]:
        """One dict per trajectory: ``id``, ``source``, ``first_row``, ``frames``, ``time_step_fs``,
        ``temperature_K``."""
        self.setup() if self.store is None else None
        return list(self.store.meta["trajectories"])

    @property
    def trajectory_ids(self) -> list[str]:
        return [t["id"] for t in self.trajectory_table]

    # ----- windows and splits -------------------------------------------------------------------
    def window_rows(self, first_row: int, begin: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """``(windows [W, h+1] store rows, horizon [W] frames)`` of every window inside frames
        ``[begin, end)`` of the trajectory starting at store row ``first_row``."""
        back = (self.history - 1) * self.history_stride
        offsets = np.arange(-back, 1, self.history_stride)  # history, oldest first
        rows, horizons = [], []
        for k in self.horizons:
            ends = np.arange(begin + back, end - k)  # t with t - back >= begin and t + k < end
            if ends.size:
                rows.append(np.concatenate([ends[:, None] + offsets, (ends + k)[:, None]], axis=1) + first_row)
                horizons.append(np.full(ends.size, k, dtype=np.int64))
        if not rows:
            return np.zeros((0, self.history + 1), np.int64), np.zeros(0, np.int64)
        return np.concatenate(rows), np.concatenate(horizons)

    def _blocks(self, frames: int) -> dict[str, tuple[int, int]]:
        """Time split: ``{split: (begin, end)}`` frame blocks of one trajectory of ``frames`` frames."""
        fractions = {}
        for name, value in (("train", self.num_train), ("val", self.num_val), ("test", self.num_test)):
            if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"split='time' takes fractions of each trajectory's frames: num_{name}={value!r} "
                                 f"(--data.init_args.num_{name}, a number in [0, 1])")  # fmt: skip
            fractions[name] = value
        if fractions["test"] is None:
            fractions["test"] = max(0.0, 1.0 - fractions["train"] - fractions["val"])
        if sum(fractions.values()) > 1.0 + 1e-9:
            raise ValueError(f"num_train + num_val + num_test = {sum(fractions.values()):g} > 1 (split='time')")
        present = [name for name in ("train", "val", "test") if fractions[name] > 0]
        usable = frames - self.gap * (len(present) - 1)
        blocks, begin = {}, 0
        for name in ("train", "val", "test"):
            size = int(math.floor(fractions[name] * usable + 1e-9)) if name in present else 0
            blocks[name] = (begin, begin + size)
            begin += size + (self.gap if size else 0)
        return blocks

    def _make_splits(self) -> dict[str, np.ndarray]:
        table = self.trajectory_table
        n = len(table)
        if self.split == "trajectory":
            sizes = [resolve_size(v, n, f"num_{s}") for s, v in (("train", self.num_train), ("val", self.num_val),
                                                                  ("test", self.num_test))]  # fmt: skip
            n_train, n_val = sizes[0], sizes[1]
            n_test = n - n_train - n_val if sizes[2] is None else sizes[2]
            if n_train + n_val + n_test > n or n_test < 0:
                raise ValueError(f"split='trajectory': num_train={n_train} + num_val={n_val} + num_test={n_test} "
                                 f"exceed the {n} trajectories ({', '.join(self.trajectory_ids)}); lower "
                                 "--data.init_args.num_train / num_val / num_test")  # fmt: skip
            perm = np.random.default_rng(self.split_seed).permutation(n)
            owner = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val],
                     "test": perm[n_train + n_val:n_train + n_val + n_test]}  # fmt: skip
            blocks = {s: {int(i): (0, table[int(i)]["frames"]) for i in owner[s]} for s in owner}
        else:
            blocks = {"train": {}, "val": {}, "test": {}}
            for i, t in enumerate(table):
                for s, block in self._blocks(t["frames"]).items():
                    blocks[s][i] = block
        windows = {}
        for s in ("train", "val", "test"):
            parts = {"rows": [], "horizon": [], "trajectory": [], "time": []}
            for i in sorted(blocks[s]):
                t = table[i]
                rows, k = self.window_rows(t["first_row"], *blocks[s][i])
                parts["rows"].append(rows)
                parts["horizon"].append(k * t["time_step_fs"])
                parts["trajectory"].append(np.full(k.size, i, dtype=np.int64))
                parts["time"].append((rows[:, -2] - t["first_row"]) * t["time_step_fs"])
            windows[s] = {
                "rows": np.concatenate(parts["rows"]) if parts["rows"] else np.zeros((0, self.history + 1), np.int64),
                **{key: np.concatenate(v) if v else np.zeros(0) for key, v in parts.items() if key != "rows"},
            }
        windows["train_pool"] = windows["train"]
        if self.train_size is not None:
            total = windows["train"]["rows"].shape[0]
            if not 0 < self.train_size <= total:
                raise ValueError(f"train_size={self.train_size} must be between 1 and the {total} training windows "
                                 "(--data.init_args.train_size)")  # fmt: skip
            keep = np.sort(np.random.default_rng(self.split_seed).permutation(total)[: self.train_size])
            windows["train"] = {key: v[keep] for key, v in windows["train"].items()}
        self._windows = windows
        frames = {s: np.unique(windows[s]["rows"]) for s in ("train", "val", "test", "train_pool")}
        self._train_pool = frames.pop("train_pool")
        return frames

    def windows(self, split: str) -> np.ndarray:
        """``[W, h+1]`` int64 store rows of the windows of ``split`` (history oldest first, then the target)."""
        self.setup() if self._windows is None else None
        return self._windows[split]["rows"]

    def window_table(self, split: str) -> dict[str, np.ndarray]:
        """The windows of ``split``: ``rows`` ``[W, h+1]`` (store rows, history oldest first, then the target),
        ``horizon`` ``[W]`` (fs), ``temperature`` ``[W]`` (K, the trajectory's thermostat), ``trajectory`` ``[W]``
        (index into :attr:`trajectory_table`) and ``time`` ``[W]`` (fs of the last history frame)."""
        if self.store is None or self.splits is None:
            self.setup()
        w = self._windows[split]
        temperature = np.array([t["temperature_K"] for t in self.trajectory_table])[w["trajectory"].astype(np.int64)]
        return {**w, "temperature": temperature}

    def dataset(self, split: str) -> WindowDataset:
        w = self.window_table(split)
        return WindowDataset(self.store, w["rows"], w["horizon"], w["temperature"], w["trajectory"], w["time"],
                             self.label_columns)  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(stage, ())
        empty = [s for s in needed if self._windows[s]["rows"].shape[0] == 0]
        if empty:
            raise ValueError(
                f"TrajectoryDataModule: no {'/'.join(empty)} windows (split={self.split!r}, "
                f"{len(self.trajectory_table)} trajectories, window span {self.span} frames, gap {self.gap}); the "
                "blocks are too short for a window: use longer trajectories, fewer history frames or smaller horizons, "
                "or change --data.init_args.num_train / num_val / num_test"
            )


__all__ = ["Trajectory", "TrajectoryDataModule", "WindowDataset", "read_trajectories", "trajectory_files"]
