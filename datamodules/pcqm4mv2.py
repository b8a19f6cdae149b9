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

Processing streams records into the memory-mapped store chunk by chunk, so RAM stays bounded (3.38 M
molecules, ~99.6 M atoms with hydrogens): the SDF is read ``SDF_READ_BYTES`` (2 MiB) at a time, the xyz
files ``chunk_size`` records at a time. SDF record ``r`` is the ``r``-th block ending with a ``$$$$``
line. A block in exactly the V2000 layout RDKit writes (OGB's file) is parsed with vectorised numpy,
checked byte by byte so that the result is RDKit's (same atomic numbers, same float64 coordinates:
``%10.4f`` fields converted as C's ``atof`` does); any other block (other column widths, ``D``/``T``,
query atoms, isotope or radical lines, malformed lines, ...) is handed alone to RDKit's
``ForwardSDMolSupplier``. With ``add_hydrogens`` RDKit reads every block (the checked ones in one
stream per chunk). Unparsable or invalid records (RDKit returns no molecule, no atoms, atomic number
outside 1..100, NaN coordinates): ``on_bad_record="skip"`` leaves them out and logs their count and
first record numbers (also saved in the store's ``meta.json``), ``"error"`` stops with the file and
record number. The store keeps each
molecule's dataset ``idx`` (per-molecule array ``idx_in_dataset``).

Splits: the official valid/test splits have no 3D structures, so the train molecules are split at
random (``split_seed``), default 95% train / 5% validation / rest (none) test.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers as ASE_NUMBERS
from ase.data import chemical_symbols as ASE_SYMBOLS

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


# ----- SDF reading ---------------------------------------------------------------------------------
# Records are the blocks between lines that start with "$$$$" (the terminator RDKit's SD suppliers look
# for). A block in the exact V2000 layout RDKit writes (checked byte by byte below) is parsed with numpy;
# any other block goes to RDKit's own ForwardSDMolSupplier, alone, so results match RDKit's.
SDF_READ_BYTES = 2 << 20  #: bytes read per step (the records in them are processed together: bounds RAM)
_ATOM_LINE = 69  # "%10.4f%10.4f%10.4f %-3s%2d%3d%3d%3d%3d%3d%3d%3d%3d%3d%3d%3d" (RDKit's V2000 atom line)
_BOND_LINE = 12  # "%3d%3d%3d%3d"
_COUNTS_LINE = 39  # "%3d%3d  0  0  0  0  0  0  0  0999 V2000"


def _symbol_table() -> np.ndarray:
    """``[256, 256]`` atomic number of the element symbol whose two bytes (second one a space for
    one-letter symbols) are the indices; -1 elsewhere. Only exact, capitalised symbols of Z = 1..118;
    RDKit's reading of each is checked in tests/test_pcqm4mv2.py."""
    table = np.full((256, 256), -1, np.int16)
    for z in range(1, 119):
        symbol = ASE_SYMBOLS[z]
        table[ord(symbol[0]), ord(symbol[1]) if len(symbol) > 1 else 32] = z
    return table


_SYMBOLS = _symbol_table()
_INT_CHARS = np.zeros(256, bool)  # what RDKit's toInt accepts in an integer field: digits, space, + and -
_INT_CHARS[[ord(c) for c in "0123456789 +-"]] = True
_CHAR_CLASS = np.full(256, 3, np.int8)  # space 0, minus 1, digit 2, anything else 3
_CHAR_CLASS[32], _CHAR_CLASS[45], _CHAR_CLASS[48:58] = 0, 1, 2
_DIGIT_VALUE = np.zeros(256, np.int64)
_DIGIT_VALUE[48:58] = np.arange(10)


def _int_fields(rows: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-justified integer fields (``[n, width]`` ASCII): ``(valid, absolute value, negative)``.

    Valid means spaces, then (``signed``) at most one ``-``, then at least one digit, nothing else.
    """
    code = _CHAR_CLASS[rows]
    minus = (code == 1).sum(axis=1)
    valid = (code[:, -1] == 2) & (np.diff(code, axis=1) >= 0).all(axis=1) & (minus <= (1 if signed else 0))
    weights = 10 ** np.arange(rows.shape[1] - 1, -1, -1, dtype=np.int64)
    return valid, _DIGIT_VALUE[rows] @ weights, minus > 0


def _windows(arr: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """``[len(starts), width]`` copy of ``arr[s : s + width]`` per start (clipped at the end; callers
    check line lengths, so clipped rows are never accepted)."""
    if arr.size < width:
        arr = np.concatenate([arr, np.zeros(width - arr.size, np.uint8)])
    view = np.lib.stride_tricks.sliding_window_view(arr, width)
    return view[np.minimum(starts, arr.size - width)]


def _ranges(first: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(f, f + n)`` over ``(first, lengths)``."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    begin = np.cumsum(lengths) - lengths
    return np.repeat(first - begin, lengths) + np.arange(total)


_CHG_COUNT = re.compile(rb"  [1-8]")  # "M  CHG%3d" then that many " %3d %3d" (atom, charge)
_CHG_ENTRY = re.compile(rb" +\d+")
_CHG_VALUE = re.compile(rb" +-?\d+")


def _tail_is_plain(lines: list[bytes], num_atoms: int) -> bool:
    """``True`` when the lines after the bond block are ``M  CHG`` lines RDKit reads without error,
    then ``M  END``, then an empty data section or ``> <label>`` items each ended by an empty line."""
    i = 0
    while i < len(lines) and lines[i].startswith(b"M  CHG"):
        line = lines[i]
        if not _CHG_COUNT.fullmatch(line[6:9]) or len(line) != 9 + 8 * int(line[6:9]):
            return False
        n = int(line[6:9])
        for k in range(n):
            atom, value = line[9 + 8 * k : 13 + 8 * k], line[13 + 8 * k : 17 + 8 * k]
            if not (_CHG_ENTRY.fullmatch(atom) and _CHG_VALUE.fullmatch(value) and 1 <= int(atom) <= num_atoms):
                return False
        i += 1
    if i == len(lines) or not lines[i].startswith(b"M  END"):
        return False
    item = False  # inside a data item's value lines
    for line in lines[i + 1 :]:
        if b"\r" in line:
            return False
        if item:
            item = line != b""
        elif line == b"":
            continue
        elif line.startswith(b">"):  # RDKit's rule: a label between the first "<" and the last ">"
            rest = line.rstrip(b" \t")[1:]
            sl, se = rest.find(b"<"), rest.rfind(b">")
            if sl < 0 or se <= sl + 1 or rest[sl + 1 : se].startswith(b"atom."):
                return False
            item = True
        else:
            return False
    return not item


def _rdkit_results(text: bytes, sanitize: bool, add_hydrogens: bool) -> list[tuple[np.ndarray | None, object]]:
    """``(z, pos)`` or ``(None, reason)`` per molecule RDKit's ForwardSDMolSupplier reads from ``text``."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    out = []
    supplier = Chem.ForwardSDMolSupplier(io.BytesIO(text), removeHs=False, sanitize=sanitize)
    try:
        for mol in supplier:
            out.append(_mol_arrays(mol, add_hydrogens))
    except Exception as err:  # noqa: BLE001 -- RDKit invariant violations on broken records (duplicate bonds, ...)
        out.append((None, f"{type(err).__name__}: {err}"))
    return out


def _mol_arrays(mol, add_hydrogens: bool) -> tuple[np.ndarray | None, object]:
    from rdkit import Chem

    if mol is None:
        return None, "RDKit cannot parse it"
    try:
        if add_hydrogens:
            mol = Chem.AddHs(mol, addCoords=True)
        if mol.GetNumAtoms() == 0 or mol.GetNumConformers() == 0:
            return None, "no atoms or no coordinates"
        z = np.fromiter((a.GetAtomicNum() for a in mol.GetAtoms()), np.int64, mol.GetNumAtoms())
        return z, mol.GetConformer().GetPositions()
    except Exception as err:  # RDKit errors on odd records
        return None, f"{type(err).__name__}: {err}"


@dataclass
class RecordChunk:
    """Consecutive records ``first .. first + len(ok) - 1`` of a structure file, parsed.

    ``ok[i]``: record ``first + i`` was read (its atoms are ``counts[i]`` rows of ``z`` / ``pos``, in
    record order); otherwise ``reasons[i]`` says why not and ``counts[i]`` is 0.
    """

    first: int
    ok: np.ndarray
    counts: np.ndarray
    z: np.ndarray
    pos: np.ndarray
    reasons: dict[int, str]
    fast: int = 0  # records read by the numpy parser (the rest went through RDKit)

    @classmethod
    def from_records(cls, first: int, results: list[tuple[np.ndarray | None, object]], fast: int = 0) -> RecordChunk:
        ok = np.array([z is not None for z, _ in results], bool)
        counts = np.array([z.size if z is not None else 0 for z, _ in results], np.int64)
        parsed = [(z, p) for z, p in results if z is not None]
        z = np.concatenate([z for z, _ in parsed] or [np.zeros(0, np.int64)]).astype(np.int64)
        pos = np.concatenate([np.asarray(p, np.float64).reshape(-1, 3) for _, p in parsed] or [np.zeros((0, 3))])
        reasons = {i: str(r) for i, (z, r) in enumerate(results) if z is None}
        return cls(first, ok, counts, z, pos, reasons, fast)


def sdf_byte_chunks(path: Path, read_bytes: int = SDF_READ_BYTES):
    """``(buffer, end, complete)``: ``buffer[:end]`` holds whole records, each ending with its ``$$$$``
    line (``complete``), or is the file's tail after the last ``$$$$`` line (``complete=False``)."""
    with open(path, "rb") as handle:
        carry = b""
        size = read_bytes
        while True:
            data = handle.read(size)
            buf = carry + data if carry else data
            if not data:
                if buf:
                    yield buf, len(buf), False
                return
            end = _after_last_terminator(buf)
            if end == 0:  # a record longer than what was read: read more
                carry, size = buf, 2 * size
                continue
            yield buf, end, True
            carry, size = buf[end:], read_bytes


def _after_last_terminator(buf: bytes) -> int:
    """Offset just past the newline of the last complete line starting with ``$$$$`` (0: none)."""
    stop = len(buf)
    while True:
        i = buf.rfind(b"\n$$$$", 0, stop)
        start = i + 1 if i >= 0 else (0 if buf.startswith(b"$$$$") else -1)
        if start < 0:
            return 0
        newline = buf.find(b"\n", start)
        if newline >= 0:
            return newline + 1
        if i < 0:
            return 0
        stop = i


def parse_sdf_chunk(buf: bytes, end: int, first: int, add_hydrogens: bool) -> RecordChunk:
    """Records of ``buf[:end]`` (whole records, each ending with its ``$$$$`` line).

    Without ``add_hydrogens``, blocks in RDKit's exact V2000 layout are parsed here with numpy (same
    numbers as RDKit: coordinates are ``%10.4f`` fields, converted exactly as C's ``atof``); the others
    are read by RDKit one by one. With ``add_hydrogens`` every record goes through RDKit (sanitized,
    ``AddHs(addCoords=True)``): the checked blocks in one stream, the others one by one.
    """
    arr = np.frombuffer(buf, np.uint8, count=end)
    newlines = np.flatnonzero(arr == 10)
    starts = np.empty_like(newlines)
    starts[0] = 0
    starts[1:] = newlines[:-1] + 1
    lengths = newlines - starts
    dollar = np.flatnonzero(arr[starts] == 36)
    dollar = dollar[lengths[dollar] >= 4]
    head = arr[starts[dollar, None] + np.arange(1, 4)]
    dollar = dollar[(head == 36).all(axis=1)]  # line indices of the "$$$$" lines, one per record
    block_first = np.concatenate([[0], dollar[:-1] + 1])  # first line of each record
    block_lines = dollar - block_first  # lines before the "$$$$" line
    n = dollar.size

    # counts line (4th line)
    counts_line = np.where(block_lines >= 6, block_first + 3, 0)
    row = _windows(arr, starts[counts_line], _COUNTS_LINE)
    valid_na, num_atoms, _ = _int_fields(row[:, 0:3], signed=False)
    valid_nb, num_bonds, _ = _int_fields(row[:, 3:6], signed=False)
    checked = (
        (block_lines >= 6) & (lengths[counts_line] == _COUNTS_LINE) & valid_na & valid_nb & (num_atoms >= 1)
        & (row[:, 34:39] == np.frombuffer(b"V2000", np.uint8)).all(axis=1)
        & (block_lines >= 5 + num_atoms + num_bonds)
    )  # fmt: skip
    end_line = np.where(checked, block_first + 4 + num_atoms + num_bonds, 0)  # "M  END" when nothing else follows
    simple = checked & (block_lines == 5 + num_atoms + num_bonds)
    mend = (_windows(arr, starts[end_line], 6) == np.frombuffer(b"M  END", np.uint8)).all(axis=1)
    simple &= mend & (lengths[end_line] >= 6)
    for b in np.flatnonzero(checked & ~simple):  # M  CHG lines or a data section: checked line by line
        lines = [buf[starts[k] : newlines[k]] for k in range(end_line[b], dollar[b])]
        checked[b] = _tail_is_plain(lines, int(num_atoms[b]))

    # atom lines
    cand = np.flatnonzero(checked)
    na = num_atoms[cand]
    atom_line = _ranges(block_first[cand] + 4, na)
    rows = _windows(arr, starts[atom_line], _ATOM_LINE)
    fields = rows[:, :30].reshape(-1, 3, 10)
    whole = fields[:, :, :5].reshape(-1, 5)
    valid_i, int_part, negative = _int_fields(whole, signed=True)
    frac = fields[:, :, 6:].reshape(-1, 4)
    frac_digit = (_CHAR_CLASS[frac] == 2).all(axis=1)
    valid_xyz = (valid_i & frac_digit & (fields[:, :, 5].reshape(-1) == 46)).reshape(-1, 3).all(axis=1)
    # C's atof reads past a 10-column field: the next column must end the number
    valid_xyz &= ((rows[:, [10, 20]] == 32) | (rows[:, [10, 20]] == 45)).all(axis=1) & (rows[:, 30] == 32)
    mantissa = int_part * 10_000 + _DIGIT_VALUE[frac] @ np.array([1000, 100, 10, 1], np.int64)
    xyz = mantissa / 10_000.0  # exact decimal -> nearest double, as atof
    xyz = np.where(negative, -xyz, xyz).reshape(-1, 3)
    z = _SYMBOLS[rows[:, 31], rows[:, 32]].astype(np.int64)
    valid_atom = (
        (lengths[atom_line] == _ATOM_LINE) & valid_xyz & (z > 0) & (rows[:, 33] == 32)
        & (rows[:, 34] == 32) & (rows[:, 35] == 48) & _INT_CHARS[rows[:, 36:]].all(axis=1)
    )  # fmt: skip
    atom_begin = np.cumsum(na) - na
    good = np.logical_and.reduceat(valid_atom, atom_begin) if cand.size else np.zeros(0, bool)

    # bond lines
    nb = num_bonds[cand]
    bond_line = _ranges(block_first[cand] + 4 + na, nb)
    if bond_line.size:
        rows = _windows(arr, starts[bond_line], _BOND_LINE).reshape(-1, 4, 3)
        valid_b, value, _ = _int_fields(rows.reshape(-1, 3), signed=False)
        value = value.reshape(-1, 4)
        owner = np.repeat(np.arange(cand.size), nb)
        a, b = np.minimum(value[:, 0], value[:, 1]), np.maximum(value[:, 0], value[:, 1])
        valid_bond = (
            (lengths[bond_line] == _BOND_LINE) & valid_b.reshape(-1, 4).all(axis=1)
            & (a >= 1) & (b <= na[owner]) & (a != b) & (value[:, 2] >= 1) & (value[:, 2] <= 4)
        )  # fmt: skip
        key = np.sort(owner * 1_000_000 + a * 1000 + b)
        duplicate = np.flatnonzero(key[1:] == key[:-1])
        bad = np.zeros(cand.size, bool)
        bad[owner[~valid_bond]] = True
        bad[key[duplicate] // 1_000_000] = True
        good &= ~bad
    fast = cand[good]

    blocks_start = starts[block_first]
    blocks_end = newlines[dollar] + 1
    results: dict[int, tuple[np.ndarray | None, object]] = {}
    if add_hydrogens:
        if fast.size:
            stream = b"".join(buf[blocks_start[k] : blocks_end[k]] for k in fast)
            out = _rdkit_results(stream, sanitize=True, add_hydrogens=True)
            if len(out) == fast.size:  # always, for checked blocks; else they are read one by one below
                results.update(zip(fast.tolist(), out))
        todo = [k for k in range(n) if k not in results]
    else:
        todo = np.setdiff1d(np.arange(n), fast).tolist()
    for k in todo:
        out = _rdkit_results(buf[blocks_start[k] : blocks_end[k]], sanitize=add_hydrogens, add_hydrogens=add_hydrogens)
        results[k] = out[0] if out else (None, "RDKit cannot parse it")
    if add_hydrogens:
        return RecordChunk.from_records(first, [results[k] for k in range(n)], fast=0)

    # merge: numpy-parsed records and the RDKit ones, in record order
    ok = np.zeros(n, bool)
    counts = np.zeros(n, np.int64)
    ok[fast] = True
    counts[fast] = na[good]
    reasons = {}
    for k, (zk, pk) in results.items():
        if zk is None:
            reasons[k] = str(pk)
        else:
            ok[k], counts[k] = True, zk.size
    offsets = np.cumsum(counts) - counts
    z_all = np.empty(int(counts.sum()), np.int64)
    pos_all = np.empty((z_all.size, 3))
    atom_good = np.repeat(good, na)
    dest = _ranges(offsets[fast], counts[fast])
    z_all[dest] = z[atom_good]
    pos_all[dest] = xyz[atom_good]
    for k, (zk, pk) in results.items():
        if zk is not None:
            z_all[offsets[k] : offsets[k] + zk.size] = zk
            pos_all[offsets[k] : offsets[k] + zk.size] = pk
    return RecordChunk(first, ok, counts, z_all, pos_all, reasons, fast=int(fast.size))


def sdf_tail_records(buf: bytes, add_hydrogens: bool) -> list[tuple[np.ndarray | None, object]]:
    """Records after the last ``$$$$`` line (usually none; a stray line there is a record to RDKit)."""
    return _rdkit_results(buf, sanitize=add_hydrogens, add_hydrogens=add_hydrogens)


def batch_records(records, size: int = 10_000):
    """Per-record ``(record, z, pos)`` / ``(record, None, reason)`` tuples (records numbered 0, 1, ...)
    as :class:`RecordChunk` s."""
    batch: list = []
    first = 0
    for record, z, pos in records:
        if not batch:
            first = record
        batch.append((z, pos))
        if len(batch) >= size:
            yield RecordChunk.from_records(first, batch)
            batch = []
    if batch:
        yield RecordChunk.from_records(first, batch)


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
        chunk_size: records per processing chunk of the xyz reader (bounds RAM; the SDF is read
            ``SDF_READ_BYTES`` at a time).
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
    def _sdf_chunks(self):
        """:class:`RecordChunk` s of the SDF, read ``SDF_READ_BYTES`` at a time."""
        record = 0
        for buf, end, complete in sdf_byte_chunks(self.sdf_path, SDF_READ_BYTES):
            if complete:
                chunk = parse_sdf_chunk(buf, end, record, self.add_hydrogens)
            else:
                chunk = RecordChunk.from_records(record, sdf_tail_records(buf[:end], self.add_hydrogens))
            record += chunk.ok.size
            yield chunk

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
            chunks = self._sdf_chunks()
            record_idx = train  # SDF record r is train molecule train[r]
        else:
            names, ids = self._xyz_names()
            chunks = batch_records(self._xyz_records(names), self.chunk_size)
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

        # why a record is left out, checked in this order (the first that applies is reported)
        unread, extra, empty, element, nonfinite, unlabelled = 1, 2, 3, 4, 5, 6
        n_records = num_fast = 0
        with StoreWriter(path, self.fingerprint()) as writer:
            for chunk in chunks:
                n = chunk.ok.size
                if n == 0:
                    continue
                n_records = chunk.first + n
                num_fast += chunk.fast
                record = chunk.first + np.arange(n)
                code = np.where(chunk.ok, 0, unread).astype(np.int8)
                if record_idx is not None:
                    code[(code == 0) & (record >= record_idx.size)] = extra
                idx = record.copy()
                if record_idx is not None:
                    idx[code == 0] = record_idx[record[code == 0]]
                code[(code == 0) & (chunk.counts == 0)] = empty
                owner = np.repeat(np.arange(n), chunk.counts)  # molecule of each atom
                atom_checks = (
                    (element, (chunk.z < 1) | (chunk.z > 100)),
                    (nonfinite, ~np.isfinite(chunk.pos).all(axis=1)),
                )
                for why, atom_bad in atom_checks:
                    flagged = np.zeros(n, bool)
                    flagged[owner[atom_bad]] = True
                    code[(code == 0) & flagged] = why
                label = np.full(n, np.nan)
                if gaps is not None:
                    inside = (code == 0) & (idx < gaps.size)
                    label[inside] = gaps[idx[inside]]
                if labelled:
                    code[(code == 0) & ~np.isfinite(label)] = unlabelled
                offsets = np.cumsum(chunk.counts) - chunk.counts
                for i in np.flatnonzero(code):
                    why = code[i]
                    if why == extra:
                        raise DataFormatError(f"{source} has more records than the {record_idx.size} train molecules of {self.split_dict_path}")
                    if why == unread:
                        reason = chunk.reasons[i]
                    elif why == empty:
                        reason = "no atoms"
                    elif why == element:
                        z = chunk.z[offsets[i] : offsets[i] + chunk.counts[i]]
                        reason = f"atomic number {int(z[(z < 1) | (z > 100)][0])} outside 1..100"
                    elif why == nonfinite:
                        reason = "NaN or infinite coordinates"
                    else:
                        reason = f"no finite homolumogap for idx {int(idx[i])} in {self.csv_path}"
                    bad(int(record[i]), reason)
                keep = code == 0
                if keep.any():
                    atoms = np.repeat(keep, chunk.counts)
                    z = chunk.z[atoms]
                    writer.append(
                        atoms={"z": z.astype(np.uint8), "pos": chunk.pos[atoms].astype(np.float32)},
                        counts=chunk.counts[keep],
                        molecules={"labels": label[keep][:, None], "idx_in_dataset": idx[keep]},
                    )
                    elements.update(np.unique(z).tolist())
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
            writer.meta["num_parsed_by_numpy"] = num_fast  # the other records went through RDKit
        log.info("PCQM4Mv2: %d of %d records parsed by numpy, the others by RDKit", num_fast, n_records)
        self.num_skipped = len(skipped)
        self.num_parsed_by_numpy = num_fast

    def label_names(self) -> list[str]:
        return list(LABEL_NAMES)

    def target_info(self, name: str) -> TargetInfo:
        if name != "homolumogap":
            raise ValueError(f"unknown PCQM4Mv2 target {name!r}; valid: homolumogap (or targets=None)")
        return TargetInfo(name="homolumogap", unit="eV", pooling="mean")
