"""PaiNN: polarizable atom interaction neural network.

Schuett, Unke & Gastegger, "Equivariant message passing for the prediction of tensorial properties
and molecular spectra", ICML 2021, arXiv 2102.03150. Written from the paper's equations.

Every atom carries scalar features ``s`` ``[N, F]`` and vector features ``v`` ``[N, 3, F]``
(Cartesian x, y, z along dim 1, one 3-vector per channel). Each interaction is a message block
(neighbours exchange scalars and vectors through a radial filter; vectors also pick up the unit
edge direction) followed by an update block (channel mixing within an atom, coupling scalars and
vectors through norms and scalar products). Vectors start at zero.

Equivariance: vectors are only ever multiplied by invariant scalars, linearly mixed over the
channel dimension, or built from unit edge vectors; scalars only see vector norms and dot products.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from atomzoo.nn.batch import num_graphs
from atomzoo.nn.conditioning import condition_modules
from atomzoo.nn.droppath import DropPath
from atomzoo.nn.graph import Graph
from atomzoo.nn.init import xavier_linear_
from atomzoo.nn.radial import SincRBF, cosine_cutoff

from .base import Backbone, BackboneOutput


def enveloped_basis(rbf: Tensor, envelope: Tensor) -> Tensor:
    """``[rbf * fcut, fcut]`` ``[E, R + 1]``: a linear filter ``W rbf + b`` times the envelope ``fcut`` is
    this times ``[W, b]^T`` (shared by every interaction)."""
    envelope = envelope.unsqueeze(-1)
    return torch.cat([rbf * envelope, envelope], dim=-1)


#: On CPU, the message blocks work through the atom pairs in chunks whose largest per-edge tensor
#: (``[2, pairs, 3, F]``) holds at most this many bytes. The numbers are the same up to summation order;
#: what changes is the allocator's behaviour: glibc's ``malloc`` serves blocks above its mmap threshold
#: (at most 32 MiB) with a fresh ``mmap`` whose pages are faulted in and zeroed on first touch, and
#: releases them with ``munmap``,
#: so a 53 MB ``[E, 3, F]`` temporary (QM9 batch of 128: E = 35,000 edges, F = 128) cost about 50 ms to
#: allocate and touch against 5-7 ms for the arithmetic (``docs/performance.md``, "PaiNN with forces,
#: 2026-12-06").
#: Chunks of a few MB are recycled from the heap. Not used on CUDA (its caching allocator recycles
#: blocks; one launch per op is better there) nor under ``torch.compile`` (inductor fuses the work).
CPU_CHUNK_BYTES = 8 * 2**20


class PairChunk(NamedTuple):
    """One chunk of ``P`` atom pairs, both directions: ``2P`` messages.

    Attributes:
        sender, receiver: ``[2P]`` long: the pairs' selected direction ``(src, dst)`` followed by the
            reverse ``(dst, src)``; a message flows from ``sender`` to ``receiver``.
        unit: ``[2, P, 3]`` unit vectors from receiver to sender (the second half is the first negated).
        radial: ``[P, R + 1]`` enveloped radial basis of the pair distances (:func:`enveloped_basis`).
    """

    sender: Tensor
    receiver: Tensor
    unit: Tensor
    radial: Tensor


class PairGeometry:
    """What PaiNN's message blocks need of the radius graph, one entry per atom pair.

    The radial filter depends on the distance only and the unit edge vector of the reverse edge is the
    negated one, so both are computed once per pair (``P = E / 2`` edges selected by
    :meth:`atomzoo.nn.graph.Graph.pair_mask`, as SchNet's :class:`~atomzoo.backbones.schnet.PairGraph`)
    and used for both messages of the pair. The results equal a per-edge computation up to the order
    of summation.

    Attributes:
        src, dst: ``[P]`` long, the selected direction of every pair.
        unit: ``[P, 3]`` unit vectors ``vec / length`` of the selected direction.
        radial: ``[P, R + 1]`` :func:`enveloped_basis` of the pair distances.
    """

    def __init__(self, src: Tensor, dst: Tensor, unit: Tensor, radial: Tensor) -> None:
        self.src, self.dst, self.unit, self.radial = src, dst, unit, radial

    @classmethod
    @torch.compiler.disable  # boolean selection: data-dependent size, eager under torch.compile
    def of(cls, graph: Graph, rbf: nn.Module, cutoff: float) -> "PairGeometry":
        pair = graph.pair_mask()
        src, dst = graph.edge_index[:, pair]
        vec, length = graph.vec[pair], graph.length[pair]
        unit = vec / length.clamp_min(1e-9).unsqueeze(-1)  # as Graph.unit
        return cls(src, dst, unit, enveloped_basis(rbf(length), cosine_cutoff(length, cutoff)))

    def chunks(self, pairs_per_chunk: int | None) -> list[PairChunk]:
        """The pairs in consecutive chunks of at most ``pairs_per_chunk`` (None: one chunk); always at
        least one chunk, possibly empty (a graph without edges)."""
        if pairs_per_chunk is None:  # no Python arithmetic on the (symbolic, under torch.compile) pair count
            return [PairChunk(torch.cat([self.src, self.dst]), torch.cat([self.dst, self.src]),
                              torch.stack([self.unit, -self.unit]), self.radial)]
        total, size = self.src.numel(), max(pairs_per_chunk, 1)
        out = []
        for start in range(0, max(total, 1), size):
            src, dst = self.src[start:start + size], self.dst[start:start + size]
            unit = self.unit[start:start + size]
            out.append(PairChunk(torch.cat([src, dst]), torch.cat([dst, src]), torch.stack([unit, -unit]),
                                 self.radial[start:start + size]))
        return out


class PaiNNMessage(nn.Module):
    """Message block (paper eqs. 7-8, Fig. 2b).

    ``phi(s_j) * W(r_ij)`` with ``phi`` a per-atom MLP ``F -> F -> 3F`` and ``W`` a linear map of the
    sinc radial basis times the cosine cutoff gives three ``[E, F]`` pieces: a scalar message, a
    gate on the neighbour's vectors and a gate on the unit edge vector. Messages are summed at the
    receiving atom.
    """

    def __init__(self, width: int, num_rbf: int) -> None:
        super().__init__()
        self.width = width
        self.phi = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 3 * width))
        self.filter = nn.Linear(num_rbf, 3 * width)

    def forward(self, s: Tensor, v: Tensor | None, chunks: list[PairChunk]) -> tuple[Tensor, Tensor]:
        """``s`` ``[N, F]``, ``v`` ``[N, 3, F]`` or None (all zero: the first block), ``chunks`` from
        :meth:`PairGeometry.chunks` -> ``(ds [N, F], dv [N, 3, F])``.

        The filter times the envelope, ``(W rbf + b) * fcut``, is computed as one product
        ``[rbf * fcut, fcut] @ [W, b]^T`` per pair (``[P, 3F]``) and broadcast over the pair's two
        messages. With ``v = None`` the neighbour-vector term ``v_j * gate`` is zero and skipped (its
        gradient is zero too). Messages are summed with ``index_add_`` in the messages' dtype.
        """
        n, width = s.size(0), self.width
        weight = torch.cat([self.filter.weight, self.filter.bias.unsqueeze(-1)], dim=-1)  # [3F, R + 1]
        h = self.phi(s)  # [N, 3F]
        ds = dv = None
        for chunk in chunks:
            pairs = chunk.radial.size(0)
            # [2, P, 3F]: both directions of every pair share the pair's filter
            x = h.index_select(0, chunk.sender).view(2, pairs, 3 * width) * nn.functional.linear(chunk.radial, weight)
            ds_edge, gate_v, gate_dir = torch.split(x, width, dim=-1)
            dv_edge = chunk.unit.unsqueeze(-1) * gate_dir.unsqueeze(2)  # [2, P, 3, F]
            if v is not None:
                dv_edge = v.index_select(0, chunk.sender).view(2, pairs, 3, width) * gate_v.unsqueeze(2) + dv_edge
            if ds is None:
                ds, dv = ds_edge.new_zeros(n, width), dv_edge.new_zeros(n, 3, width)
            ds.index_add_(0, chunk.receiver, ds_edge.reshape(2 * pairs, width))
            dv.index_add_(0, chunk.receiver, dv_edge.view(2 * pairs, 3, width))
        return ds, dv


class PaiNNUpdate(nn.Module):
    """Update block (paper eqs. 9-11, Fig. 2c).

    ``U v`` and ``V v`` mix vector channels (no bias, so equivariant). An MLP of ``[s, ||V v||]``
    gives ``a_vv, a_sv, a_ss``; then ``dv = a_vv * U v`` and ``ds = a_sv * <U v, V v> + a_ss``.
    ``||V v||`` is ``sqrt(sum_xyz (V v)^2 + eps)`` so that its gradient stays finite when ``v = 0``
    (atoms without neighbours, first layer).
    """

    def __init__(self, width: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.width = width
        self.eps = eps
        self.U = nn.Linear(width, width, bias=False)
        self.V = nn.Linear(width, width, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``s`` ``[N, F]``, ``v`` ``[N, 3, F]`` -> ``(ds [N, F], dv [N, 3, F])``."""
        uv = self.U(v)
        vv = self.V(v)
        norm = torch.sqrt((vv * vv).sum(dim=1) + self.eps)
        a_vv, a_sv, a_ss = torch.split(self.mlp(torch.cat([s, norm], dim=-1)), self.width, dim=-1)
        dv = a_vv.unsqueeze(1) * uv
        ds = a_sv * (uv * vv).sum(dim=1) + a_ss
        return ds, dv


class PaiNNInteraction(nn.Module):
    """Message block then update block, each residual; returns the total ``(ds, dv)`` of the block."""

    def __init__(self, width: int, num_rbf: int) -> None:
        super().__init__()
        self.message = PaiNNMessage(width, num_rbf)
        self.update = PaiNNUpdate(width)

    def forward(self, s: Tensor, v: Tensor | None, chunks: list[PairChunk]) -> tuple[Tensor, Tensor]:
        """``v = None`` stands for zero vectors (before the first block)."""
        ds_m, dv_m = self.message(s, v, chunks)
        ds_u, dv_u = self.update(s + ds_m, dv_m if v is None else v + dv_m)
        return ds_m + ds_u, dv_m + dv_u


class PaiNN(Backbone):
    """PaiNN backbone.

    Defaults are the paper's QM9 setting: 128 features, 3 interaction blocks, 5 A cosine cutoff,
    20 sinc radial basis functions.

    Args:
        width: feature size F of both scalars and vectors.
        num_interactions: number of message + update blocks.
        num_rbf: number of sinc radial basis functions ``sin(k pi d / rc) / d``.
        cutoff: interaction radius in Angstrom.
        max_atomic_number: largest atomic number the element embedding covers (its rows are
            ``0 .. max_atomic_number``; formerly ``max_z``).
        max_num_neighbors: optional neighbour cap (exceeding it raises; see :mod:`atomzoo.nn.graph`).
        condition_dim: size of the per-molecule condition (0: none: plain PaiNN). When > 0 the
            message block reads the adaLN-modulated, normalised scalars ``s_mod`` (``phi(s_mod)``), the
            update block reads ``s_mod + ds_message``, and the block's total scalar update is gated,
            ``s <- s + g * (ds_message + ds_update)``; vectors are neither modulated nor gated
            (:mod:`atomzoo.nn.conditioning`). ``condition=None`` uses the learned mask token.

    Masking: ``data.atom_mask`` (``[N]`` bool) replaces the element embedding of masked atoms by the
    learned ``mask_embedding`` ``[F]`` (``supports_mask = True``).

    Initialisation (:meth:`reset_parameters`) follows schnetpack 2.x's ``PaiNN`` (every layer a
    ``schnetpack.nn.Dense``): element embedding N(0, 1) (``nn.Embedding``'s default; the mask
    embedding too), every linear layer Xavier-uniform with zero bias. schnetpack fuses some layers
    that we keep apart -- the filters of all interactions (one ``Dense(R, 3 F T)``) and ``U``/``V``
    (one ``Dense(F, 2F)``) -- so those get the Xavier bound of the fused matrix,
    ``sqrt(6 / (fan_in + fan_out_fused))``, as in schnetpack.

    Output: scalars ``[N, F]`` (invariant), vectors ``[N, 3, F]`` (equivariant, x/y/z on dim 1).

    Implementation (speed, not maths): filters and unit vectors once per atom pair
    (:class:`PairGeometry`), the first block without the zero neighbour-vector term, and on CPU the
    per-edge work in chunks of at most :data:`CPU_CHUNK_BYTES` (``docs/performance.md``).
    """

    periodic = True  # all geometry comes from self.graph(data), periodic images included
    renamed_arguments = {"max_z": "max_atomic_number"}  # one name per meaning (ET's old max_z counted rows)
    supports_mask = True

    def __init__(
        self,
        width: int = 128,
        num_interactions: int = 3,
        num_rbf: int = 20,
        cutoff: float = 5.0,
        max_atomic_number: int = 100,
        max_num_neighbors: int | None = None,
        condition_dim: int = 0,
    ) -> None:
        super().__init__(
            width=width,
            cutoff=cutoff,
            vector_width=width,
            condition_dim=condition_dim,
            max_num_neighbors=max_num_neighbors,
        )
        self.embedding = nn.Embedding(max_atomic_number + 1, width)
        self.rbf = SincRBF(num_rbf, cutoff)
        self.interactions = nn.ModuleList(PaiNNInteraction(width, num_rbf) for _ in range(num_interactions))
        self.conditioning = condition_modules(num_interactions, width, condition_dim)
        self.mask_embedding = nn.Parameter(torch.empty(width))
        self.drop_path = DropPath()  # per-atom stochastic depth of each layer's update; rate set by objectives
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """schnetpack initialisation (see the class docstring); adaLN modules as in DiT."""
        self.embedding.reset_parameters()
        nn.init.normal_(self.mask_embedding)
        xavier_linear_(self.interactions)
        width, num_rbf, num = self.width, self.rbf.frequencies.numel(), len(self.interactions)
        for block in self.interactions:  # Xavier bounds of schnetpack's fused layers
            nn.init.uniform_(block.message.filter.weight, -math.sqrt(6.0 / (num_rbf + 3 * width * num)),
                             math.sqrt(6.0 / (num_rbf + 3 * width * num)))
            for mix in (block.update.U, block.update.V):
                nn.init.uniform_(mix.weight, -math.sqrt(6.0 / (3 * width)), math.sqrt(6.0 / (3 * width)))

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        self.check_condition(condition, num_graphs(data))
        graph = self.graph(data)
        s = self.apply_atom_mask(self.embedding(data.z), data, self.mask_embedding)
        pairs = PairGeometry.of(graph, self.rbf, self.cutoff)
        chunked = s.device.type == "cpu" and not torch.compiler.is_compiling()
        chunks = pairs.chunks(CPU_CHUNK_BYTES // (6 * self.width * s.element_size()) if chunked else None)
        v = None  # vectors start at zero; the first block skips them
        cond = self.conditioning.prepare(condition, num_graphs(data)) if self.conditioning is not None else None
        for i, interaction in enumerate(self.interactions):
            if cond is None:
                ds, dv = interaction(s, v, chunks)
            else:
                s_mod, gate = self.conditioning[i](s, cond, data.batch)
                ds, dv = interaction(s_mod, v, chunks)
                ds = gate * ds
            ds, dv = self.drop_path(ds, dv)
            s = s + ds
            v = dv if v is None else v + dv
        if v is None:  # no interaction blocks
            v = s.new_zeros(s.size(0), 3, self.width)
        return BackboneOutput(scalars=s, vectors=v, graph=graph)


__all__ = ["PaiNN"]
