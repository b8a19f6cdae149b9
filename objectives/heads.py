"""Output heads that sit on a backbone's per-atom features.

Scalar heads (regression), equivariant per-atom vector heads (denoising) and pooled molecular
projections (SCD, JEPA-EMA) and the SIGReg projector (JEPA-SIGReg). Every head takes pieces of a :class:`~atomzoo.backbones.base.BackboneOutput`.

Initialisation: every linear layer of every head here is Xavier-uniform with zero bias
(:func:`atomzoo.nn.init.xavier_linear_`), the convention of the references: PyG's SchNet readout
(``lin1``/``lin2``), schnetpack's ``Atomwise`` (``schnetpack.nn.Dense``), torchmd-net's output
models (``EquivariantVectorOutput``'s gated blocks, used by the denoising and SCD papers). Layer
norms keep unit weight / zero bias.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from atomzoo.nn.graph import Graph
from atomzoo.nn.init import xavier_linear_
from atomzoo.nn.radial import GaussianRBF, cosine_cutoff


class AtomwiseMLP(nn.Module):
    """Per-atom MLP ``[N, width] -> [N, out]``: Linear -> SiLU -> Linear (hidden = width // 2 by default).

    ``hidden=0`` makes it linear: per-feature standardisation (``BatchNorm1d`` without affine
    parameters, running statistics at evaluation) then one Linear layer. On a frozen backbone this
    is a linear probe; the standardisation makes its optimisation well conditioned (raw backbone
    features differ in scale by orders of magnitude, and an SGD probe on them stays far from the
    least-squares optimum for any sensible learning rate).
    """

    def __init__(self, width: int, out: int = 1, hidden: int | None = None) -> None:
        super().__init__()
        if hidden is not None and hidden < 0:
            raise ValueError(f"head_hidden={hidden} must be >= 0 (0: linear head) (--model.head_hidden)")
        if hidden == 0:
            self.net = nn.Sequential(nn.BatchNorm1d(width, affine=False), nn.Linear(width, out))
        else:
            hidden = hidden or max(1, width // 2)
            self.net = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, out))
        xavier_linear_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ----- equivariant per-atom vector heads (denoising) ------------------------------------------------
class EdgeVectorHead(nn.Module):
    """Equivariant per-atom vector from invariant features and edge directions (no vector features needed).

    For every edge ``(src -> dst)`` of the backbone's radius graph a learned *invariant* weight

        w_e = MLP([h_src, h_dst, rbf(d_e), d_e]) * fcut(d_e)               (one number per edge)

    multiplies the unit edge vector ``u_e = (r_src - r_dst) / d_e``; the weighted unit vectors are
    summed at the receiving atom:  ``v_i = sum_{e: dst(e) = i} w_e u_e``.  Because ``w_e`` is rotation
    invariant and ``u_e`` rotates with the molecule, ``v`` is rotation-equivariant (and translation
    invariant). This is the construction methods.md describes for SchNet-like backbones.

    Args:
        width: scalar feature size F of the backbone.
        cutoff: the backbone's cutoff in Angstrom (the smooth envelope ``fcut`` vanishes there).
        num_rbf: Gaussian radial basis functions on ``[0, cutoff]``.
        hidden: hidden size of the edge MLP (default F).

    Shapes: ``scalars`` ``[N, F]``; ``graph`` the backbone's :class:`atomzoo.nn.graph.Graph` (``E`` edges);
    output ``[N, 3]`` in the units of whatever the loss compares it with (dimensionless weights
    times unit vectors).
    """

    def __init__(self, width: int, cutoff: float, num_rbf: int = 16, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or width
        self.cutoff = float(cutoff)
        self.rbf = GaussianRBF(num_rbf, 0.0, cutoff)
        self.node = nn.Linear(width, hidden)  # shared per-atom projection before the edge MLP
        self.edge = nn.Sequential(
            nn.Linear(2 * hidden + num_rbf + 1, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1)
        )
        xavier_linear_(self)

    def forward(self, scalars: Tensor, graph: Graph) -> Tensor:
        src, dst = graph.edge_index
        h = self.node(scalars)
        features = torch.cat([h[src], h[dst], self.rbf(graph.length), graph.length.unsqueeze(-1)], dim=-1)
        weight = self.edge(features) * cosine_cutoff(graph.length, self.cutoff).unsqueeze(-1)  # [E, 1]
        return scatter(weight * graph.unit, dst, dim=0, dim_size=scalars.size(0), reduce="sum")


class GatedVectorHead(nn.Module):
    """Equivariant per-atom vector from the backbone's own vector features.

        v_i = sum_k g_ik (W V_i)_k,   g_i = MLP(h_i)   (W: bias-free linear mixing of the Fv channels)

    ``V_i`` ``[3, Fv]`` are equivariant channels; a bias-free linear map over the channel axis and a
    multiplication by invariant gates ``g_i`` ``[Fv]`` keep equivariance, so ``v_i`` ``[3]`` rotates with
    the molecule.

    Args:
        width: scalar feature size F; vector_width: vector channels Fv; hidden: gate MLP hidden size.

    Shapes: ``scalars`` ``[N, F]``, ``vectors`` ``[N, 3, Fv]`` -> ``[N, 3]``.
    """

    def __init__(self, width: int, vector_width: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or width
        self.mix = nn.Linear(vector_width, vector_width, bias=False)
        self.gate = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, vector_width))
        xavier_linear_(self)

    def forward(self, scalars: Tensor, vectors: Tensor) -> Tensor:
        mixed = self.mix(vectors)  # [N, 3, Fv]
        return (mixed * self.gate(scalars).unsqueeze(1)).sum(-1)


class NoiseHead(nn.Module):
    """The per-atom equivariant vector head a denoising objective puts on any backbone.

    Uses :class:`GatedVectorHead` on the backbone's vector features when it has them
    (``backbone.has_vectors``: PaiNN, MACE), else :class:`EdgeVectorHead` on scalars and edge
    directions (SchNet). ``kind`` forces one: ``"auto"`` | ``"vector"`` | ``"edge"``.

    Call ``head(scalars, vectors, graph)`` (pieces of a :class:`~atomzoo.backbones.base.BackboneOutput`; the
    scalars may have been modulated, e.g. FiLM-conditioned) -> ``[N, 3]``.
    """

    def __init__(self, backbone, kind: str = "auto", hidden: int | None = None, num_rbf: int = 16) -> None:
        super().__init__()
        if kind not in ("auto", "vector", "edge"):
            raise ValueError(f"noise head kind={kind!r}: choose 'auto', 'vector' or 'edge'")
        if kind == "vector" and not backbone.has_vectors:
            raise ValueError(f"{type(backbone).__name__} has no vector features: use the 'edge' (or 'auto') noise head")
        self.kind = ("vector" if backbone.has_vectors else "edge") if kind == "auto" else kind
        if self.kind == "vector":
            self.head = GatedVectorHead(backbone.width, backbone.vector_width, hidden)
        else:
            self.head = EdgeVectorHead(backbone.width, backbone.cutoff, num_rbf, hidden)

    def forward(self, scalars: Tensor, vectors: Tensor | None, graph: Graph) -> Tensor:
        if self.kind == "vector":
            if vectors is None:
                raise ValueError("the vector noise head needs the backbone's vector features (got None)")
            return self.head(scalars, vectors)
        return self.head(scalars, graph)


# ----- molecular embeddings (SCD, JEPA) -------------------------------------------------------------
class PooledProjection(nn.Module):
    """Per-atom features -> one embedding per molecule (SCD's projection head, reference ``ProjHead2``).

        per atom:  LN -> Linear(F, H) -> SiLU -> LN                       [N, H]
        sum-pool over each molecule                                       [G, H]
        per mol.:  LN -> Linear(H, H) -> SiLU -> LN -> Linear(H, D)       [G, D]

    Args:
        width: input feature size F; hidden: H (default F); out_dim: D (default H).
    Shapes: ``scalars`` ``[N, F]``, ``batch`` ``[N]``, ``num_graphs`` G -> ``[G, D]``.
    """

    def __init__(self, width: int, hidden: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden or width
        out_dim = out_dim or hidden
        self.out_dim = out_dim
        self.atom = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.SiLU(), nn.LayerNorm(hidden))
        self.molecule = nn.Sequential(
            nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(), nn.LayerNorm(hidden), nn.Linear(hidden, out_dim)
        )
        xavier_linear_(self)

    def forward(self, scalars: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        pooled = scatter(self.atom(scalars), batch, dim=0, dim_size=num_graphs, reduce="sum")
        return self.molecule(pooled)


class SIGRegProjector(nn.Module):
    """The projector that feeds SIGReg, as in LeJEPA (arXiv 2511.08544) / LeWorldModel (arXiv 2603.19312).

        mean-pool per molecule -> Linear(F, H) -> BatchNorm1d(H) -> GELU -> Linear(H, D)

    Nothing normalises after the last Linear: the scale of each output dimension stays free, so
    SIGReg's scale term and the std-based collapse diagnostics can see it. Call it ONCE per step on
    all views together (:meth:`forward` on the concatenated pooled features), so the BatchNorm
    statistics are those of the views SIGReg sees and its running statistics move once per step.

    Args:
        width: input feature size F; hidden: H (default 2F); out_dim: D (default F).
    Shapes: :meth:`pool` ``[N, F]`` -> ``[G, F]``; :meth:`forward` ``[B, F]`` -> ``[B, D]``.
    """

    def __init__(self, width: int, hidden: int | None = None, out_dim: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 2 * width
        self.out_dim = out_dim or width
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, self.out_dim))

    @staticmethod
    def pool(scalars: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        return scatter(scalars, batch, dim=0, dim_size=num_graphs, reduce="mean")

    def forward(self, pooled: Tensor) -> Tensor:
        return self.net(pooled)
