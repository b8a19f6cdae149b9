"""The training data's range: the shortest distance of every element pair seen in training.

A model trained on Cu2 at 2.2-6 A has never seen two copper atoms at 1 A; what it predicts there is an
extrapolation (issue 31 found such a model predicting Cu2 at 1.0 A *lower* than at 40 A), and nothing
in the numbers says so. So every training run records, per pair of elements, the shortest distance
between two such atoms within :data:`RADIUS` Angstrom in its training split (periodic images
included), and prediction warns, with the numbers, when an input has a pair closer than that:

    Cu-Cu distance 1.00 A in structure 3 is below the shortest in training (2.21 A): the prediction is an extrapolation

The record (``TrainingRange.to_record()``, JSON; in the checkpoint's provenance record and the export's
model card as ``training_range``)::

    {"radius_A": 10.0, "elements": [29], "shortest_distance_A": {"Cu-Cu": 2.2}}

Pairs are named by their element symbols in order of atomic number (``"H-C"``, ``"C-O"``). A pair of
elements absent from ``shortest_distance_A`` never came closer than ``radius_A`` in training: an input
with such a pair closer than ``radius_A`` is outside the range too. ``radius_A`` (10 A) is at least every
built-in backbone's default cutoff, so every pair a model of the zoo sees is covered; only pairs
within the model's cutoff are checked (the model sees no other). Elements the model never saw are
refused before this check (:func:`atomzoo.inference.check_atoms`).

Used by: ``AtomsDataModule.data_summary`` (:func:`TrainingRange.of_structures` over the training
split), the provenance record (:mod:`atomzoo.objectives.provenance`), the model card
(:mod:`atomzoo.cards`), ``AtomzooModel.predict`` / the ASE calculator (:mod:`atomzoo.inference`) and
``zoo predict`` (``Regression.predict_step``), each warning once per call with
:class:`ExtrapolationWarning`. Checkpoints and cards written before the record existed have none:
nothing is checked and nothing is said.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .graph import build_graph
from .statistics import MAX_Z

#: search radius in Angstrom for the shortest pair distances (>= every built-in backbone's default cutoff)
RADIUS = 10.0
#: Angstrom below the training shortest that still counts as inside (float32 inputs; the record's rounding)
SLACK = 1e-4
#: number of atoms per chunk when a training split is scanned
CHUNK_ATOMS = 200_000


class ExtrapolationWarning(UserWarning):
    """An input to a model has an element pair closer than any pair of those elements in its training data."""


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)


def pair_name(a: int, b: int) -> str:
    """``"H-C"`` for atomic numbers ``(6, 1)``: the symbols in order of atomic number."""
    a, b = sorted((int(a), int(b)))
    return f"{_symbol(a)}-{_symbol(b)}"


def pair_distances(z: Tensor, pos: Tensor, batch: Tensor, radius: float, cell: Tensor | None = None,
                   pbc: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Every pair of atoms (each once; periodic images included) closer than ``radius``.

    Args:
        z: ``[N]`` atomic numbers; pos: ``[N, 3]`` Angstrom; batch: ``[N]`` structure of each atom
        (sorted); cell ``[B, 3, 3]`` / pbc ``[B, 3]``: lattice vectors as rows and periodic directions,
        or None for molecules.

    Returns:
        ``(key [E] long, length [E] float64, structure [E] long)``: the pair's element key
        ``min(z) * (MAX_Z + 1) + max(z)``, its distance, and the structure it is in.
    """
    with torch.no_grad():
        pos = pos.detach().to(torch.float64)
        cell = cell.detach().to(torch.float64) if cell is not None else None
        graph = build_graph(pos, batch, radius, cell=cell, pbc=pbc)
        src, dst = graph.edge_index
        keep = src <= dst  # each pair once (an atom's own periodic images: src == dst)
        zs, zd = z[src[keep]].long(), z[dst[keep]].long()
        key = torch.minimum(zs, zd) * (MAX_Z + 1) + torch.maximum(zs, zd)
        return key, graph.length[keep].detach(), batch[dst[keep]]


def _molecule_pairs(z: Tensor, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
    """Every pair of atoms of each molecule once, as ``(key [E], length [E] float64)`` (see
    :func:`pair_distances`), computed per molecule size with one ``cdist`` per size: a training split
    of small molecules (QM9's 2.4 million atoms) in seconds."""
    with torch.no_grad():
        counts = torch.bincount(batch)
        first = torch.cumsum(counts, 0) - counts
        keys, lengths = [], []
        for n in torch.unique(counts).tolist():
            if n < 2:
                continue
            rows = first[counts == n].unsqueeze(1) + torch.arange(n)  # [m, n] atoms of the molecules of n atoms
            i, j = torch.triu_indices(n, n, offset=1)
            p = pos[rows].to(torch.float64)
            lengths.append(torch.linalg.vector_norm(p[:, i] - p[:, j], dim=-1).flatten())
            zs, zd = z[rows][:, i].long(), z[rows][:, j].long()
            keys.append((torch.minimum(zs, zd) * (MAX_Z + 1) + torch.maximum(zs, zd)).flatten())
        if not keys:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
        return torch.cat(keys), torch.cat(lengths)


@dataclass(frozen=True)
class Extrapolation:
    """One structure's pair outside the training range (the one furthest below its training shortest)."""

    structure: int
    pair: str
    distance: float  #: Angstrom
    shortest: float | None  #: the shortest in training (Angstrom); None: never within ``radius`` in training


@dataclass
class TrainingRange:
    """Shortest distance (Angstrom) of each element pair within ``radius`` in the training data.

    Attributes:
        radius: the search radius in Angstrom.
        elements: atomic numbers of the training data.
        shortest: ``{(z_a, z_b): distance}`` with ``z_a <= z_b``.
    """

    radius: float = RADIUS
    elements: list[int] = field(default_factory=list)
    shortest: dict[tuple[int, int], float] = field(default_factory=dict)

    # ----- building ---------------------------------------------------------------------------------
    @classmethod
    def of_structures(cls, chunks: Iterable[tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]],
                      radius: float = RADIUS) -> TrainingRange:  # fmt: skip
        """The range of the structures in ``chunks``: each ``(z, pos, batch, cell, pbc)`` as in
        :func:`pair_distances` (a training split read in pieces)."""
        best = torch.full(((MAX_Z + 1) ** 2,), float("inf"), dtype=torch.float64)
        present = torch.zeros(MAX_Z + 1, dtype=torch.bool)
        for z, pos, batch, cell, pbc in chunks:
            present[z.long()] = True
            if pbc is not None and bool(pbc.any()):
                key, length, _ = pair_distances(z, pos, batch, radius, cell, pbc)
            else:
                key, length = _molecule_pairs(z, pos, batch)
                length = torch.where(length < radius, length, torch.inf)
            best.scatter_reduce_(0, key, length, reduce="amin")
        found = torch.isfinite(best).nonzero().flatten().tolist()
        return cls(radius=float(radius), elements=present.nonzero().flatten().tolist(),
                   shortest={divmod(k, MAX_Z + 1): float(best[k]) for k in found})  # fmt: skip

    def to_record(self) -> dict:
        """The JSON form (module docstring), distances rounded to 1e-4 A."""
        return {"radius_A": self.radius, "elements": list(self.elements),
                "shortest_distance_A": {pair_name(a, b): round(d, 4) for (a, b), d in sorted(self.shortest.items())}}

    @classmethod
    def from_record(cls, record: dict | None) -> TrainingRange | None:
        """The range of a record (:meth:`to_record`); ``None`` for ``None`` (files written before it existed)."""
        if not record:
            return None
        from ase.data import atomic_numbers

        shortest = {}
        for name, distance in record.get("shortest_distance_A", {}).items():
            a, b = (atomic_numbers[s] for s in name.split("-"))
            shortest[(min(a, b), max(a, b))] = float(distance)
        return cls(radius=float(record.get("radius_A", RADIUS)), elements=[int(z) for z in record.get("elements", [])],
                   shortest=shortest)  # fmt: skip

    # ----- checking ---------------------------------------------------------------------------------
    def outside(self, z: Tensor, pos: Tensor, batch: Tensor, cutoff: float, cell: Tensor | None = None,
                pbc: Tensor | None = None, structure_ids: Tensor | None = None) -> list[Extrapolation]:  # fmt: skip
        """The structures with a pair closer than ``cutoff`` (the model's) and closer than the
        training shortest for its elements (or, for a pair never within ``radius`` in training,
        closer than ``radius``); per structure its pair furthest below the range, in structure order.

        ``structure_ids``: ``[B]`` the name of each structure of ``batch`` (default: its position)."""
        key, length, structure = pair_distances(z, pos, batch, min(float(cutoff), self.radius), cell, pbc)
        bound = torch.full(((MAX_Z + 1) ** 2,), self.radius, dtype=torch.float64)
        for (a, b), d in self.shortest.items():
            bound[a * (MAX_Z + 1) + b] = d
        limit = bound[key]
        # SLACK: the training structures themselves (float32 batches, a record rounded to 1e-4 A) are inside
        bad = (length < limit - SLACK).nonzero().flatten()
        if bad.numel() == 0:
            return []
        ratio = length[bad] / limit[bad]
        out: dict[int, tuple[float, int]] = {}
        for e, r in zip(bad.tolist(), ratio.tolist()):
            s = int(structure[e])
            if s not in out or r < out[s][0]:
                out[s] = (r, e)
        findings = []
        for s in sorted(out):
            e = out[s][1]
            a, b = divmod(int(key[e]), MAX_Z + 1)
            findings.append(Extrapolation(
                structure=int(structure_ids[s]) if structure_ids is not None else s, pair=pair_name(a, b),
                distance=float(length[e]), shortest=self.shortest.get((a, b)),
            ))  # fmt: skip
        return findings

    def message(self, findings: Sequence[Extrapolation], name: Callable[[int], str] = "structure {}".format) -> str:
        """One line on ``findings`` (the first in full, then how many more structures and which);
        ``name(structure)`` is how a structure is called (default ``"structure 3"``)."""
        first = findings[0]
        if first.shortest is not None:
            text = (f"{first.pair} distance {first.distance:.2f} A in {name(first.structure)} is below the shortest "
                    f"in training ({first.shortest:.2f} A)")  # fmt: skip
        else:
            text = (f"{first.pair} distance {first.distance:.2f} A in {name(first.structure)}: no {first.pair} pair "
                    f"closer than {self.radius:g} A in training")  # fmt: skip
        text += ": the prediction is an extrapolation"
        if len(findings) > 1:
            more = [str(f.structure) for f in findings[1:]]
            listing = ", ".join(more[:10]) + (", ..." if len(more) > 10 else "")
            text += f"; {len(more)} more structures have pairs closer than the training range ({listing})"
        return text

    def warn(self, findings: Sequence[Extrapolation], name: Callable[[int], str] = "structure {}".format,
             stacklevel: int = 3) -> None:  # fmt: skip
        """Issue :meth:`message` as one :class:`ExtrapolationWarning` (nothing for no findings)."""
        if findings:
            warnings.warn(self.message(findings, name), ExtrapolationWarning, stacklevel=stacklevel)


__all__ = ["RADIUS", "Extrapolation", "ExtrapolationWarning", "TrainingRange", "pair_distances", "pair_name"]
