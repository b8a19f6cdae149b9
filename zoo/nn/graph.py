"""Neighbour lists for batches of molecules.

The graph is rebuilt inside every forward pass from the positions the model actually sees, so that
noised positions (denoising objectives) and ``pos.requires_grad_()`` (forces by autograd) are
handled: connectivity is discrete and computed without gradient, edge vectors are differentiable
functions of ``pos``.

Convention (PyTorch Geometric's "source_to_target"): ``edge_index = [src, dst]``; a message flows from
atom ``src`` to atom ``dst`` and is aggregated at ``dst``. ``vec = pos[src] + shift @ cell - pos[dst]``
points from the receiving atom to its neighbour (``shift`` is the integer lattice translation of the
neighbour's periodic image, zero for molecules). Both directions of every pair are present, and in
a periodic structure every image of an atom closer than the cutoff is its own edge (an atom can
neighbour its own images when the cell is smaller than twice the cutoff).

Two ways to enumerate pairs, chosen automatically (``method="auto"``):

- ``"all_pairs"``: every pair of atoms of each structure, with tensor ops and no Python loop over
  structures; cost ``sum_i n_i^2``. Fastest for batches of small molecules (QM9, MD17, PCQM4Mv2).
- ``"cell_list"``: a linear-cost cell list from the ``vesin`` library (Fraux et al.,
  github.com/Luthaf/vesin), one call per structure, with periodic boundary conditions in any
  subset of the three cell directions. Used for periodic structures and for structures of more than
  :data:`ALL_PAIRS_MAX_ATOMS` atoms (the measured crossover, see ``docs/performance.md``).

Connectivity is computed without gradient; ``vec`` and ``length`` are differentiable in ``pos`` and,
for periodic structures, in ``cell`` (for stress).

Reusing a neighbour list (Verlet list; Allen & Tildesley, *Computer Simulation of Liquids*, 2017,
sec. 5.3): a batch may carry ``candidate_edge_index`` ``[2, C]``, pairs found once at ``cutoff + skin``
(:func:`radius_graph`) and valid while no atom has moved more than ``skin / 2``. The graph is then
those candidates closer than ``cutoff``, in their order -- the same edges in the same order as a fresh
build (the ASE calculator, :mod:`atomzoo.calculator`, reuses its list this way across MD steps).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Graph:
    """A radius graph over a batch of molecules.

    Attributes:
        edge_index: ``[2, E]`` long, ``[src, dst]``.
        vec: ``[E, 3]`` edge vectors ``pos[src] + shift @ cell - pos[dst]`` in Angstrom
            (differentiable w.r.t. pos and cell).
        length: ``[E]`` edge lengths in Angstrom.
        shifts: ``[E, 3]`` integer image translations (periodic structures only, else None).
    """

    edge_index: Tensor
    vec: Tensor
    length: Tensor
    shifts: Tensor | None = None  #: ``[E, 3]`` integer lattice translations of ``src`` (periodic only)

    @property
    def src(self) -> Tensor:
        return self.edge_index[0]

    @property
    def dst(self) -> Tensor:
        return self.edge_index[1]

    @property
    def unit(self) -> Tensor:
        """``[E, 3]`` unit edge vectors (zero-length edges cannot occur: self pairs are excluded)."""
        return self.vec / self.length.clamp_min(1e-9).unsqueeze(-1)

    def pair_mask(self) -> Tensor:
        """``[E]`` bool selecting one direction of every pair: ``P = E / 2`` edges.

        Both directions of every pair are in the graph (``(src, dst, shift)`` and ``(dst, src, -shift)``
        have the same length), so anything that depends on the distance alone (radial basis, filter
        networks, cutoff envelopes) needs computing on one direction only; the opposite message then
        reuses it. Selected: ``src < dst``, and for an atom's own periodic images (``src == dst``) the
        image whose shift is lexicographically positive.
        """
        src, dst = self.edge_index
        keep = src < dst
        if self.shifts is not None:
            s = self.shifts
            positive = (s[:, 0] > 0) | ((s[:, 0] == 0) & ((s[:, 1] > 0) | ((s[:, 1] == 0) & (s[:, 2] > 0))))
            keep = keep | ((src == dst) & positive)
        return keep


def radius_graph(
    pos: Tensor,
    batch: Tensor,
    cutoff: float,
    max_num_neighbors: int | None = None,
    on_overflow: str = "error",
) -> Tensor:
    """All ordered pairs ``(src, dst)``, ``src != dst``, in the same molecule and closer than ``cutoff``.

    Pairs are enumerated molecule by molecule with tensor ops (no Python loop over molecules); the
    cost is ``sum_i n_i^2`` for molecules of ``n_i`` atoms, which is what small molecules (QM9,
    MD17, PCQM4Mv2: at most a few dozen atoms) want. Periodic or large structures go through
    :func:`cell_list_graph` (:func:`build_graph` chooses).

    Args:
        pos: ``[N, 3]`` positions in Angstrom.
        batch: ``[N]`` molecule index of each atom, sorted ascending (as in a PyG ``Batch``).
        cutoff: radius in Angstrom (pairs with distance ``< cutoff`` are kept).
        max_num_neighbors: optional cap on neighbours per atom. Nothing is ever dropped silently:
            if an atom has more neighbours, ``on_overflow`` decides ("error" raises, "warn" warns and
            keeps all edges).
        on_overflow: "error" or "warn".

    Returns:
        ``[2, E]`` long edge index ``[src, dst]`` sorted by ``dst`` then ``src``.
    """
    if pos.dim() != 2 or pos.size(-1) != 3:
        raise ValueError(f"pos must have shape [N, 3], got {tuple(pos.shape)}")
    if batch.numel() != pos.size(0):
        raise ValueError(f"batch has {batch.numel()} entries but pos has {pos.size(0)} atoms")
    device = pos.device
    n_atoms = pos.size(0)
    if n_atoms == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    with torch.no_grad():
        counts = torch.bincount(batch)  # atoms per molecule
        first = torch.cumsum(counts, 0) - counts  # index of each molecule's first atom
        # every atom pairs with every atom of its own molecule
        per_atom = counts[batch]  # [N] number of candidates for each atom
        dst = torch.repeat_interleave(torch.arange(n_atoms, device=device), per_atom)
        start = torch.cumsum(per_atom, 0) - per_atom  # offset of each dst's block
        local = torch.arange(dst.numel(), device=device) - start[dst]
        src = first[batch[dst]] + local
        diff = pos.detach()[src] - pos.detach()[dst]
        keep = (src != dst) & ((diff * diff).sum(-1) < cutoff * cutoff)
        edge_index = torch.stack([src[keep], dst[keep]])
        _check_overflow(edge_index, n_atoms, cutoff, max_num_neighbors, on_overflow)
    return edge_index


#: Above this many atoms in one structure, the cell list beats all pairs (measured on a 2-core CPU:
#: ``benchmarks/neighbour_list.py``, numbers in ``docs/performance.md``).
ALL_PAIRS_MAX_ATOMS = 200


def _check_overflow(edge_index: Tensor, n_atoms: int, cutoff: float, max_num_neighbors, on_overflow: str) -> None:
    if max_num_neighbors is None or edge_index.numel() == 0:
        return
    worst = int(torch.bincount(edge_index[1], minlength=n_atoms).max())
    if worst > max_num_neighbors:
        msg = (
            f"an atom has {worst} neighbours within {cutoff} A, more than max_num_neighbors="
            f"{max_num_neighbors}; raise max_num_neighbors (or set it to null) -- edges are "
            "never dropped silently"
        )
        if on_overflow == "error":
            raise RuntimeError(msg)
        warnings.warn(msg, stacklevel=3)


def cell_list_graph(
    pos: Tensor,
    batch: Tensor,
    cutoff: float,
    cell: Tensor | None = None,
    pbc: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Pairs closer than ``cutoff`` (all periodic images included) by ``vesin``'s cell list.

    Args:
        pos: ``[N, 3]`` positions in Angstrom.
        batch: ``[N]`` structure index of each atom, sorted ascending.
        cutoff: radius in Angstrom.
        cell: ``[B, 3, 3]`` lattice vectors as rows (Angstrom), or None for molecules.
        pbc: ``[B, 3]`` bool, periodic directions, or None (no periodicity).

    Returns:
        ``(edge_index [2, E] long, shifts [E, 3] long or None)``: edges grouped by structure, in the
        (deterministic) order vesin returns them; ``shifts`` is None when ``pbc`` is None.

    Raises:
        ValueError: a periodic direction with a zero or degenerate lattice vector.
    """
    from vesin import NeighborList

    device = pos.device
    with torch.no_grad():
        counts = torch.bincount(batch).tolist()
        points = pos.detach().to("cpu", torch.float64).numpy()
        cells = cell.detach().to("cpu", torch.float64).numpy() if cell is not None else None
        periodic = pbc.detach().to("cpu").numpy().astype(bool) if pbc is not None else None
        finder = NeighborList(cutoff=float(cutoff), full_list=True)
        pieces_i, pieces_j, pieces_s = [], [], []
        first = 0
        for g, n in enumerate(counts):  # one call per structure: the cell list itself is linear in n
            directions = periodic[g] if periodic is not None else np.zeros(3, bool)
            if directions.any():
                box = cells[g]
                volume = abs(np.linalg.det(box))
                if not np.isfinite(volume) or volume < 1e-6:
                    raise ValueError(
                        f"structure {g} is periodic (pbc={directions.tolist()}) but its cell {box.tolist()} has zero "
                        "volume; give three independent lattice vectors or set pbc to False"
                    )
                i, j, shift = finder.compute(points[first:first + n], box, directions.tolist(), "ijS")
            else:
                i, j = finder.compute(points[first:first + n], np.zeros((3, 3)), False, "ij")
                shift = np.zeros((len(i), 3), np.int32) if periodic is not None else None
            pieces_i.append(i.astype(np.int64) + first)
            pieces_j.append(j.astype(np.int64) + first)
            pieces_s.append(shift)
            first += n
        dst = torch.from_numpy(np.concatenate(pieces_i)) if pieces_i else torch.empty(0, dtype=torch.long)
        src = torch.from_numpy(np.concatenate(pieces_j)) if pieces_j else torch.empty(0, dtype=torch.long)
        edge_index = torch.stack([src, dst]).to(device)
        if periodic is None or not pieces_s:
            return edge_index, None
        shifts = torch.from_numpy(np.concatenate(pieces_s).astype(np.int64)).reshape(-1, 3)
    return edge_index, shifts.to(device)


@torch.compiler.disable  # data-dependent sizes: runs eager under --model.compile (atomzoo.nn.compile)
def build_graph(
    pos: Tensor,
    batch: Tensor,
    cutoff: float,
    max_num_neighbors: int | None = None,
    on_overflow: str = "error",
    cell: Tensor | None = None,
    pbc: Tensor | None = None,
    method: str = "auto",
    candidates: Tensor | None = None,
) -> Graph:
    """Radius graph plus differentiable edge vectors and lengths.

    Args:
        pos, batch, cutoff, max_num_neighbors, on_overflow: as in :func:`radius_graph`.
        cell: ``[B, 3, 3]`` lattice vectors as rows in Angstrom (one cell per structure), or None.
        pbc: ``[B, 3]`` bool periodic directions, or None. A structure with any periodic direction
            gets its periodic images; ``cell`` is then required.
        method: ``"auto"`` (all pairs for batches of small non-periodic structures, the cell list
            otherwise), ``"all_pairs"`` or ``"cell_list"``.
        candidates: ``[2, C]`` long pairs ``[src, dst]`` to choose from instead of searching
            (a batch's ``candidate_edge_index``: a Verlet list, see the module docstring); the
            graph keeps those closer than ``cutoff``, in their order. Molecules only.

    Raises:
        ValueError: ``pbc`` without ``cell``, ``method="all_pairs"`` for a periodic batch,
            ``candidates`` for a periodic batch, or an unknown ``method``.
        RuntimeError: more than ``max_num_neighbors`` neighbours (``on_overflow="error"``).
    """
    if method not in ("auto", "all_pairs", "cell_list"):
        raise ValueError(f"method={method!r}: choose 'auto', 'all_pairs' or 'cell_list'")
    periodic = pbc is not None and bool(pbc.any())
    if periodic and cell is None:
        raise ValueError("pbc is set but no cell was given: periodic structures need their lattice vectors")
    if candidates is not None:
        if periodic:
            raise ValueError(
                "candidate_edge_index is for molecules: a periodic batch needs its images searched on every call"
            )
        return _graph_from_candidates(pos, candidates, cutoff, max_num_neighbors, on_overflow)
    if method == "auto":
        largest = int(torch.bincount(batch).max()) if batch.numel() else 0
        method = "cell_list" if periodic or largest > ALL_PAIRS_MAX_ATOMS else "all_pairs"
    if method == "all_pairs":
        if periodic:
            raise ValueError("method='all_pairs' cannot find periodic images; use 'cell_list' or 'auto'")
        edge_index = radius_graph(pos, batch, cutoff, max_num_neighbors, on_overflow)
        vec = pos[edge_index[0]] - pos[edge_index[1]]
        return Graph(edge_index=edge_index, vec=vec, length=torch.linalg.vector_norm(vec, dim=-1))
    edge_index, shifts = cell_list_graph(pos, batch, cutoff, cell if periodic else None, pbc if periodic else None)
    _check_overflow(edge_index, pos.size(0), cutoff, max_num_neighbors, on_overflow)
    vec = pos[edge_index[0]] - pos[edge_index[1]]
    if periodic:
        offsets = torch.einsum("ek,ekl->el", shifts.to(pos.dtype), cell.to(pos.dtype)[batch[edge_index[1]]])
        vec = vec + offsets
    else:
        shifts = None
    return Graph(edge_index=edge_index, vec=vec, length=torch.linalg.vector_norm(vec, dim=-1), shifts=shifts)


def _graph_from_candidates(pos: Tensor, candidates: Tensor, cutoff: float, max_num_neighbors,
                           on_overflow: str) -> Graph:  # fmt: skip
    """The candidate pairs closer than ``cutoff``, in their order, with differentiable vectors and lengths."""
    src, dst = candidates
    vec = pos[src] - pos[dst]
    length = torch.linalg.vector_norm(vec, dim=-1)
    keep = length.detach() < cutoff
    edge_index = candidates[:, keep]
    _check_overflow(edge_index, pos.size(0), cutoff, max_num_neighbors, on_overflow)
    return Graph(edge_index=edge_index, vec=vec[keep], length=length[keep])
