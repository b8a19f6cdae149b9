"""On-disk storage for datasets of molecules: concatenated arrays plus offsets, memory-mapped.

A store is a directory holding one raw binary file per array and a ``meta.json`` that names each
array's dtype and shape, the store's format version and a fingerprint of the source it came from.
Per-atom arrays (``z``, ``pos``, forces, ...) are concatenated over molecules; molecule ``i`` owns
rows ``offsets[i]:offsets[i+1]``. Per-molecule arrays (labels) have one row per molecule. A store
with ``z`` and ``pos`` also holds ``structure_hash`` (kind ``"hash"``, one uint64 per molecule:
:func:`atomzoo.datamodules.duplicates.structure_hashes`), which finds duplicates across splits.

Why this layout: a Python list of per-molecule objects does not scale to 10^8 atoms, while memory
maps open instantly, cost no RAM until read, and are shared between DataLoader workers.

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place only
when complete, so a crash never leaves a half-written store that looks valid. ``meta.json`` is
written last; a directory without it (or with another version/fingerprint) is stale and rebuilt.

Concurrent builders: :func:`open_or_build` takes an exclusive lock (``fcntl.flock`` on
``.<name>.lock`` beside the store) around check-then-build and checks again once it holds the lock,
so several processes on one new file (parallel benchmark cells, jobs sharing a cluster cache) build
the store once while the others wait and then open it. The finished store is swapped in by renames
only (an old store is first renamed aside, then removed), so an opening reader sees the old store,
the new one or none, never a half-deleted one.

Integrity: each array's BLAKE2b checksum (128 bit, of the file's bytes) is written into ``meta.json``
at build time together with the file's modification time. Opening a store re-hashes every file whose
modification time or size differs from the recorded one, so a file overwritten in place (same size)
is found (:class:`CorruptStoreError`) and :func:`open_or_build` rebuilds the store with a warning;
an unchanged store costs one ``stat`` per file. (An edit that restores the recorded modification time
is not seen. Stores written before checksums existed are checked by size only.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .duplicates import HASH_ARRAY, structure_hashes

FORMAT_VERSION = 1
META_FILE = "meta.json"


class StaleCacheError(RuntimeError):
    """The store on disk is missing, incomplete, of another version or built from other sources."""


class CorruptStoreError(StaleCacheError):
    """A file of the store no longer holds what was written when the store was built (checksum mismatch)."""


def file_checksum(path: Path, chunk: int = 1 << 24) -> str:
    """BLAKE2b (128-bit) hex digest of a file's bytes, read in 16 MiB chunks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class StoreWriter:
    """Streams molecules into a new store in chunks (bounded memory).

    Usage::

        with StoreWriter(path, fingerprint={...}) as w:
            w.append(atoms={"z": z, "pos": pos}, counts=n_atoms, molecules={"labels": labels})
            w.describe(label_names=["energy"], label_units=["eV"], atomic_numbers=[1, 6, 8])

    ``atoms`` arrays have one row per atom of the chunk, ``molecules`` arrays one row per molecule,
    ``counts`` gives atoms per molecule. Dtypes and trailing shapes are fixed by the first chunk.
    On success the directory is moved into place atomically; on error nothing is left behind.

    The dataset contract: :meth:`describe` must be called before the block ends, and what it declares
    must match what was written (label columns, elements, forces and their unit); otherwise the
    store is not written and a ``ValueError`` names the mismatch.
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.meta: dict[str, Any] = {}
        self._tmp: Path | None = None
        self._files: dict[str, Any] = {}
        self._hashes: dict[str, Any] = {}
        self._specs: dict[str, dict[str, Any]] = {}
        self._num_atoms = 0
        self._num_molecules = 0
        self._offsets: list[np.ndarray] = []
        self._elements: set[int] = set()
        self._described = False

    def __enter__(self) -> StoreWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        return self

    def _write(self, name: str, array: np.ndarray, kind: str) -> None:
        array = np.ascontiguousarray(array)
        spec = self._specs.get(name)
        if spec is None:
            spec = {"dtype": array.dtype.str, "trailing": list(array.shape[1:]), "kind": kind, "rows": 0}
            self._specs[name] = spec
            self._files[name] = open(self._tmp / f"{name}.bin", "wb")  # noqa: SIM115
        if np.dtype(spec["dtype"]) != array.dtype or list(array.shape[1:]) != spec["trailing"]:
            raise ValueError(
                f"array '{name}' changed dtype/shape between chunks: {spec['dtype']} {spec['trailing']} "
                f"vs {array.dtype.str} {list(array.shape[1:])}"
            )
        data = array.tobytes()
        self._files[name].write(data)
        self._hashes.setdefault(name, hashlib.blake2b(digest_size=16)).update(data)
        spec["rows"] += array.shape[0]

    def describe(
        self,
        label_names: list[str],
        label_units: list[str],
        atomic_numbers: list[int],
        force_unit: str | None = None,
    ) -> None:
        """Declare what the store holds (required; checked against the written arrays on exit).

        Args:
            label_names: one name per column of the per-molecule ``labels`` array (``[]``: no labels).
            label_units: the unit of each label (``""`` for dimensionless or unknown).
            atomic_numbers: the distinct elements of the store.
            force_unit: unit of the per-atom ``forces`` array (e.g. ``"eV/A"``); ``None`` when there is none.
        """
        if len(label_units) != len(label_names):
            raise ValueError(f"store {self.path}: {len(label_names)} label names but {len(label_units)} units")
        self.meta["label_names"] = [str(n) for n in label_names]
        self.meta["label_units"] = [str(u) for u in label_units]
        self.meta["atomic_numbers"] = sorted(int(z) for z in atomic_numbers)
        self.meta["force_unit"] = force_unit
        self._described = True

    def _check_description(self) -> None:
        where = f"store {self.path}"
        if not self._described:
            raise ValueError(
                f"{where}: the reader did not call StoreWriter.describe(label_names, label_units, atomic_numbers, "
                "force_unit) -- the dataset contract of docs/datasets.md"
            )
        names = self.meta["label_names"]
        labels = self._specs.get("labels")
        columns = (labels["trailing"] or [1])[0] if labels else 0
        if columns != len(names):
            raise ValueError(f"{where}: 'labels' has {columns} columns but {len(names)} label names were declared: {names}")
        if "z" in self._specs and set(self.meta["atomic_numbers"]) != self._elements:
            raise ValueError(
                f"{where}: declared atomic_numbers {self.meta['atomic_numbers']} differ from the elements written "
                f"{sorted(self._elements)}"
            )
        has_forces = "forces" in self._specs
        if has_forces != (self.meta["force_unit"] is not None):
            raise ValueError(
                f"{where}: " + ("a 'forces' array was written without a force_unit" if has_forces
                                else f"force_unit {self.meta['force_unit']!r} declared but no 'forces' array written")
            )  # fmt: skip

    def append(
        self,
        atoms: dict[str, np.ndarray],
        counts: np.ndarray,
        molecules: dict[str, np.ndarray] | None = None,
    ) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        total = int(counts.sum())
        for name, array in atoms.items():
            if array.shape[0] != total:
                raise ValueError(f"per-atom array '{name}' has {array.shape[0]} rows, counts sum to {total}")
            self._write(name, array, "atom")
            if name == "z":
                self._elements.update(int(v) for v in np.unique(array))
        for name, array in (molecules or {}).items():
            if array.shape[0] != counts.size:
                raise ValueError(f"per-molecule array '{name}' has {array.shape[0]} rows for {counts.size} molecules")
            self._write(name, array, "molecule")
        if "z" in atoms and "pos" in atoms:  # exact duplicates across splits are counted from it
            self._write(HASH_ARRAY, structure_hashes(atoms["z"], atoms["pos"], counts), "hash")
        self._offsets.append(self._num_atoms + np.cumsum(counts))
        self._num_atoms += total
        self._num_molecules += counts.size

    def __exit__(self, exc_type, exc, tb) -> None:
        for handle in self._files.values():
            handle.close()
        assert self._tmp is not None
        if exc_type is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            return
        try:
            self._check_description()
            offsets = np.concatenate([np.zeros(1, np.int64), *self._offsets]).astype(np.int64)
            offsets.tofile(self._tmp / "offsets.bin")
            self._hashes["offsets"] = hashlib.blake2b(offsets.tobytes(), digest_size=16)
            arrays = {
                name: {"dtype": s["dtype"], "shape": [s["rows"], *s["trailing"]], "kind": s["kind"]}
                for name, s in self._specs.items()
            }
            arrays["offsets"] = {"dtype": offsets.dtype.str, "shape": [offsets.size], "kind": "index"}
            for name, spec in arrays.items():  # what Store checks on opening
                spec["blake2b"] = self._hashes[name].hexdigest()
                spec["mtime_ns"] = (self._tmp / f"{name}.bin").stat().st_mtime_ns
            meta = {
                "format_version": FORMAT_VERSION,
                "fingerprint": self.fingerprint,
                "num_molecules": self._num_molecules,
                "num_atoms": self._num_atoms,
                "arrays": arrays,
                **self.meta,
            }
            with open(self._tmp / META_FILE, "w") as f:
                json.dump(meta, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            old = None
            if self.path.exists():  # rename aside first: the store path never holds a half-deleted store
                old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
                os.replace(self.path, old / "store")
            os.replace(self._tmp, self.path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise


class Store:
    """Read-only, memory-mapped view of a store written by :class:`StoreWriter`.

    Attributes:
        meta: the parsed ``meta.json``.
        offsets: ``[M + 1]`` int64, molecule ``i`` owns atom rows ``offsets[i]:offsets[i+1]``.
        arrays: name -> ``np.memmap`` (per-atom or per-molecule rows).
    """

    def __init__(self, path: str | os.PathLike, fingerprint: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        meta_path = self.path / META_FILE
        try:
            with open(meta_path) as f:
                self.meta = json.load(f)
        except FileNotFoundError as err:
            raise StaleCacheError(f"no complete store at {self.path} (missing {META_FILE})") from err
        except json.JSONDecodeError as err:
            raise StaleCacheError(f"corrupt {meta_path}: {err}") from err
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise StaleCacheError(
                f"store {self.path} has format version {self.meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        if fingerprint is not None and self.meta.get("fingerprint") != fingerprint:
            raise StaleCacheError(f"store {self.path} was built from other sources or settings")
        self.arrays: dict[str, np.ndarray] = {}
        for name, spec in self.meta["arrays"].items():
            file = self.path / f"{name}.bin"
            dtype = np.dtype(spec["dtype"])
            shape = tuple(spec["shape"])
            expected = int(np.prod(shape)) * dtype.itemsize
            stat = file.stat() if file.exists() else None
            if stat is None or stat.st_size != expected:
                raise StaleCacheError(f"store {self.path}: {file.name} is missing or has the wrong size")
            if "blake2b" in spec and stat.st_mtime_ns != spec.get("mtime_ns") and file_checksum(file) != spec["blake2b"]:
                raise CorruptStoreError(
                    f"store {self.path}: {file.name} changed after the store was built (its checksum differs: "
                    "overwritten or damaged)"
                )
            if expected == 0:
                self.arrays[name] = np.zeros(shape, dtype)
            else:
                self.arrays[name] = np.memmap(file, dtype=dtype, mode="r", shape=shape)
        self.offsets = np.asarray(self.arrays.pop("offsets"))

    def __len__(self) -> int:
        return int(self.meta["num_molecules"])

    @property
    def counts(self) -> np.ndarray:
        """``[M]`` atoms per molecule."""
        return np.diff(self.offsets)

    def atom_arrays(self) -> list[str]:
        return [n for n, s in self.meta["arrays"].items() if s["kind"] == "atom"]

    def molecule_arrays(self) -> list[str]:
        return [n for n, s in self.meta["arrays"].items() if s["kind"] == "molecule"]


@contextlib.contextmanager
def build_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock for building the store at ``path`` (blocks while another process holds it).

    The lock is ``fcntl.flock`` on the file ``.<name>.lock`` beside the store; the operating system
    releases it when the holder exits or crashes, so a killed builder never leaves it stuck. The
    holder removes the file before releasing it (nothing is left in the cache), and a waiter that
    then gets the lock of a removed file tries again on the current one. Where ``fcntl`` does not
    exist (Windows) there is no lock.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock_file = path.parent / f".{path.name}.lock"
    while True:
        handle = open(lock_file, "a")  # noqa: SIM115 -- closed below
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            current = os.stat(lock_file)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(current, os.fstat(handle.fileno())):
            break
        handle.close()  # the holder before removed this file: lock the current one
    try:
        yield
    finally:
        lock_file.unlink(missing_ok=True)
        handle.close()


def open_or_build(path: str | os.PathLike, fingerprint: dict[str, Any], build) -> Store:
    """Open the store at ``path`` if it is complete and current, else call ``build(path)`` and open it.

    ``build`` must write the store with a :class:`StoreWriter` using the same ``fingerprint``.
    Building happens under :func:`build_lock`, after a second check: of several processes that find
    no store, one builds it and the others wait for it and open it. A store whose files no longer match
    their checksums (:class:`CorruptStoreError`) is rebuilt with a ``UserWarning`` naming the file.
    """
    try:
        return Store(path, fingerprint)
    except CorruptStoreError as err:
        warnings.warn(f"{err}; rebuilding it from its sources", stacklevel=2)
    except StaleCacheError:
        pass  # build outside the handler: a reader's error must not carry "no store yet" as its context
    with build_lock(path):
        try:
            return Store(path, fingerprint)  # another process built it while this one waited
        except StaleCacheError:
            pass
        build(Path(path))
        return Store(path, fingerprint)
