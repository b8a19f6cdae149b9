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

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

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

    def forward(self, s: Tensor, v: Tensor, graph: Graph, radial: Tensor) -> tuple[Tensor, Tensor]:
        """``s`` ``[N, F]``, ``v`` ``[N, 3, F]``, ``radial`` ``[E, R + 1]`` (:func:`enveloped_basis`) -> ``(ds, dv)``.

        The filter times the envelope, ``(W rbf + b) * fcut``, is computed as one product
        ``[rbf * fcut, fcut] @ [W, b]^T``: the same numbers without an ``[E, 3F]`` multiplication
        (the step is memory-bound on its ``[E, 3F]`` and ``[E, 3, F]`` tensors).
        """
        src, dst = graph.edge_index
        weight = torch.cat([self.filter.weight, self.filter.bias.unsqueeze(-1)], dim=-1)  # [3F, R + 1]
        x = self.phi(s).index_select(0, src) * nn.functional.linear(radial, weight)  # [E, 3F]
        ds_edge, gate_v, gate_dir = torch.split(x, self.width, dim=-1)
        dv_edge = v.index_select(0, src) * gate_v.unsqueeze(1) + graph.unit.unsqueeze(-1) * gate_dir.unsqueeze(1)
        n = s.size(0)
        ds = scatter(ds_edge, dst, dim=0, dim_size=n, reduce="sum")
        dv = scatter(dv_edge, dst, dim=0, dim_size=n, reduce="sum")
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

    def forward(self, s: Tensor, v: Tensor, graph: Graph, radial: Tensor) -> tuple[Tensor, Tensor]:
        ds_m, dv_m = self.message(s, v, graph, radial)
        ds_u, dv_u = self.update(s + ds_m, v + dv_m)
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
        radial = enveloped_basis(self.rbf(graph.length), cosine_cutoff(graph.length, self.cutoff))
        s = self.apply_atom_mask(self.embedding(data.z), data, self.mask_embedding)
        v = s.new_zeros(s.size(0), 3, self.width)
        cond = self.conditioning.prepare(condition, num_graphs(data)) if self.conditioning is not None else None
        for i, interaction in enumerate(self.interactions):
            if cond is None:
                ds, dv = interaction(s, v, graph, radial)
            else:
                s_mod, gate = self.conditioning[i](s, cond, data.batch)
                ds, dv = interaction(s_mod, v, graph, radial)
                ds = gate * ds
            ds, dv = self.drop_path(ds, dv)
            s = s + ds
            v = v + dv
        return BackboneOutput(scalars=s, vectors=v, graph=graph)


__all__ = ["PaiNN"]
