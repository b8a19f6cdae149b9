"""Neighbour lists for batches of molecules.

The graph is rebuilt inside every forward pass from the positions the model actually sees, so that
noised positions (denoising objectives) and ``pos.requires_grad_()`` (forces by autograd) are
handled: connectivity is discrete and computed without gradient, edge vectors are differentiable
functions of ``pos``.

Convention (PyTorch Geometric's "source_to_target"): ``edge_index = [src, dst]``; a message flows from
atom ``src`` to atom ``dst`` and is aggregated at ``dst``. ``vec = pos[src] - pos[dst]`` points from
the receiving atom to its neighbour. Both directions of every pair are present.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Graph:
    """A radius graph over a batch of molecules.

    Attributes:
        edge_index: ``[2, E]`` long, ``[src, dst]``.
        vec: ``[E, 3]`` edge vectors ``pos[src] - pos[dst]`` in Angstrom (differentiable w.r.t. pos).
        length: ``[E]`` edge lengths in Angstrom.
    """

    edge_index: Tensor
    vec: Tensor
    length: Tensor

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
    MD17, PCQM4Mv2: at most a few dozen atoms) want. Periodic or very large systems need a cell
    list instead (e.g. ``vesin``).

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
        if max_num_neighbors is not None:
            degree = torch.bincount(edge_index[1], minlength=n_atoms)
            worst = int(degree.max()) if degree.numel() else 0
            if worst > max_num_neighbors:
                msg = (
                    f"an atom has {worst} neighbours within {cutoff} A, more than max_num_neighbors="
                    f"{max_num_neighbors}; raise max_num_neighbors (or set it to null) -- edges are "
                    "never dropped silently"
                )
                if on_overflow == "error":
                    raise RuntimeError(msg)
                warnings.warn(msg, stacklevel=2)
    return edge_index


def build_graph(
    pos: Tensor,
    batch: Tensor,
    cutoff: float,
    max_num_neighbors: int | None = None,
    on_overflow: str = "error",
) -> Graph:
    """Radius graph plus differentiable edge vectors and lengths (see :func:`radius_graph`)."""
    edge_index = radius_graph(pos, batch, cutoff, max_num_neighbors, on_overflow)
    vec = pos[edge_index[0]] - pos[edge_index[1]]
    length = torch.linalg.vector_norm(vec, dim=-1)
    return Graph(edge_index=edge_index, vec=vec, length=length)
