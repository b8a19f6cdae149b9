"""ET: the equivariant transformer of TorchMD-NET, with optional SCD-style adaLN conditioning.

Thoelke & De Fabritiis, "Equivariant Transformers for Neural Network based Molecular Potentials",
ICLR 2022, arXiv 2202.02541. Written from the paper's equations and checked number for number
against torchmd-net 3.1's ``TorchMD_ET`` (``tests/test_et.py``; same hyperparameters give the same
parameters, the same parameter count, and, with weights copied by
:func:`atomzoo.backbones.et_torchmd.load_torchmd_et`, the same outputs).

Architecture (paper section 3, Fig. 1). Distances ``r_ij`` (Angstrom) are expanded in ``R``
exponential-normal radial functions (PhysNet's basis) times a cosine cutoff::

    e_k(r) = phi(r) * exp(-beta_k (exp(-alpha (r - r_lo)) - mu_k)^2),  alpha = 5 / (r_up - r_lo)

Atoms start from an element embedding combined with a *neighbour embedding* (paper eq. 3: a second
element embedding of each neighbour, weighted by a linear filter of ``e(r_ij)`` times the cutoff,
summed, concatenated with the atom's own embedding and projected). Every layer is pre-norm
multi-head attention over the neighbours *including the atom itself* (TorchMD-NET's graph has
self loops: distance 0, direction 0)::

    x_n = LN(x);  q, k = W_q x_n, W_k x_n;  v = W_v x_n  (3 F channels: scalar, vec-gate, dir-gate)
    a_ij = SiLU(sum_head_dim q_i * k_j * SiLU(D_K e(r_ij))) * phi(r_ij)         (per head)
    s_ij, g1_ij, g2_ij = split(v_j * SiLU(D_V e(r_ij)))
    y_i = sum_j a_ij s_ij;   w_i = sum_j (vec_j * g1_ij + g2_ij * u_ij)          (u_ij unit vector)
    o1, o2, o3 = split(W_o y_i);   v1, v2, v3 = split(U vec_i)  (no bias: equivariant)
    dx_i = <v1_i, v2_i> * o2 + o3;   dvec_i = v3_i * o1 + w_i

and ``x += dx``, ``vec += dvec``; the output scalars go through a final layer norm. Vectors start
at zero. Equivariance: vectors are only scaled by invariants, mixed linearly over channels (no
bias) or built from unit edge vectors; scalars see vectors only through dot products.

Conditioning (self-conditioned denoising, Perez & Gomez-Bombarelli arXiv 2603.17196; official code
TyJPerez/SelfConditionedDenoisingAtoms, ``adaLN2`` in ``CondEquivMultiHeadAttention``). With
``condition_dim > 0`` and a condition ``c`` ``[G, C]`` each layer's normalised input is modulated
and its scalar update gated::

    x_n = LN(x);  shift, scale, gate = MLP([c[batch], x_n])
    x_in = tanh(a * x_n) * (1 + scale) / a + shift     (modulation="tanh", the official code's
                                                        adaDyT2; a learnable, init 0.2)
    x_in = x_n * (1 + scale) + shift                    (modulation="affine", DiT adaLN)
    dx = tanh(alpha * gate) * dx                        (alpha learnable, init 0.2)

``MLP = Linear(C+F, F) - SiLU - LayerNorm(F) - Linear(F, 3F)`` as in the official code (last layer
xavier-initialised, zero bias). Vectors are never modulated. Unlike the official code, ``x_n`` is
not detached in the MLP input, so forces by autograd stay the exact gradient of the energy of a
conditioned ET too. With ``condition_dim > 0``, ``condition=None`` runs every molecule with the
learned mask token (``self.conditioning``); with ``condition_dim = 0`` the network is exactly
TorchMD-NET's ET. Not ported from the official SCD "CT" variant:
its per-layer post-norms, DyT pre-norm of the vectors, equivariant layer norm of the output
vectors and the +-1000 clamps; the SCD objective's mask token and condition layer norm live in
:mod:`atomzoo.objectives.scd`.

Drop-path (stochastic depth, as SCD's ``JointDropPath``): in training, each layer's ``(dx, dvec)``
of an atom is dropped with probability ``drop_path`` and the kept ones scaled by ``1/(1-p)``; the
same mask for scalars and vectors of an atom.
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
from atomzoo.nn.radial import ShiftedSoftplus, cosine_cutoff

from .base import Backbone, BackboneOutput

ACTIVATIONS = {"silu": nn.SiLU, "ssp": ShiftedSoftplus, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
DISTANCE_INFLUENCE = ("keys", "values", "both", "none")
MODULATIONS = ("tanh", "affine")


class ExpNormalRBF(nn.Module):
    """Exponential-normal radial basis (PhysNet, Unke & Meuwly 2019) times a cosine cutoff.

    ``e_k(r) = phi(r) exp(-beta_k (exp(-alpha r) - mu_k)^2)`` with ``alpha = 5 / cutoff``, ``mu_k``
    evenly spaced in ``[exp(-cutoff), 1]`` and ``beta_k = (2 (1 - exp(-cutoff)) / R)^-2``.
    ``means`` and ``betas`` are parameters when ``trainable`` else buffers (TorchMD-NET's choice,
    so that the parameter count matches). Input ``[E]`` distances in Angstrom, output ``[E, R]``.
    """

    def __init__(self, num_rbf: int = 50, cutoff: float = 5.0, trainable: bool = True) -> None:
        super().__init__()
        if num_rbf < 1:
            raise ValueError(f"num_rbf must be >= 1, got {num_rbf}")
        self.num_rbf = int(num_rbf)
        self.cutoff = float(cutoff)
        self.alpha = 5.0 / self.cutoff
        start = math.exp(-self.cutoff)
        means = torch.linspace(start, 1.0, self.num_rbf)
        betas = torch.full((self.num_rbf,), (2.0 / self.num_rbf * (1.0 - start)) ** -2)
        if trainable:
            self.means = nn.Parameter(means)
            self.betas = nn.Parameter(betas)
        else:
            self.register_buffer("means", means)
            self.register_buffer("betas", betas)

    def forward(self, distance: Tensor) -> Tensor:
        d = distance.unsqueeze(-1)
        envelope = cosine_cutoff(d, self.cutoff)
        return envelope * torch.exp(-self.betas * (torch.exp(-self.alpha * d) - self.means) ** 2)


class NeighborEmbedding(nn.Module):
    """Neighbour embedding (paper eq. 3).

    ``x_i <- W_c [x_i, sum_j W_D e(r_ij) phi(r_ij) * E'(z_j)]`` with ``E'`` a second element
    embedding table. Self pairs are not part of the sum (``graph`` has none).

    Shapes: ``z`` ``[N]``, ``x`` ``[N, F]``, ``edge_rbf`` ``[E, R]``, ``envelope`` ``[E]`` -> ``[N, F]``.
    """

    def __init__(self, width: int, num_rbf: int, num_embeddings: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, width)
        self.distance_proj = nn.Linear(num_rbf, width)
        self.combine = nn.Linear(2 * width, width)
        nn.init.xavier_uniform_(self.distance_proj.weight)
        nn.init.zeros_(self.distance_proj.bias)
        nn.init.xavier_uniform_(self.combine.weight)
        nn.init.zeros_(self.combine.bias)

    def forward(self, z: Tensor, x: Tensor, graph: Graph, edge_rbf: Tensor, envelope: Tensor,
                neighbours: Tensor | None = None) -> Tensor:
        """``neighbours`` ``[N, F]``: the neighbours' element embeddings if already computed (ET passes
        them with masked atoms replaced by its mask embedding); default ``self.embedding(z)``."""
        src, dst = graph.edge_index
        neighbours = self.embedding(z) if neighbours is None else neighbours
        message = self.distance_proj(edge_rbf) * envelope.unsqueeze(-1) * neighbours.index_select(0, src)
        neighbours = scatter(message, dst, dim=0, dim_size=x.size(0), reduce="sum")
        return self.combine(torch.cat([x, neighbours], dim=-1))


class AdaLN(nn.Module):
    """Per-layer adaptive layer norm of the SCD official code (see the module docstring).

    Args:
        width: scalar feature size F.
        condition_dim: size C of the per-molecule condition.
        modulation: ``"tanh"`` (official code: ``tanh(a x) (1 + scale) / a + shift``, ``a``
            learnable init 0.2, ``|a|`` clamped to >= 1e-5) or ``"affine"`` (``x (1 + scale) + shift``).
        alpha_init: initial value of the gate temperature ``alpha`` (and of ``a``).

    ``forward(x_n [N, F], condition [G, C], batch [N]) -> (x_in [N, F], gate [N, F])`` with
    ``x_n`` the layer-normed input; the caller multiplies the layer's scalar update by ``gate``.
    """

    def __init__(self, width: int, condition_dim: int, modulation: str = "tanh", alpha_init: float = 0.2) -> None:
        super().__init__()
        if modulation not in MODULATIONS:
            raise ValueError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
        self.modulation = modulation
        self.mlp = nn.Sequential(
            nn.Linear(condition_dim + width, width), nn.SiLU(), nn.LayerNorm(width), nn.Linear(width, 3 * width)
        )
        nn.init.xavier_uniform_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        self.squash = nn.Parameter(torch.tensor(float(alpha_init))) if modulation == "tanh" else None

    def forward(self, x_n: Tensor, condition: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        inputs = torch.cat([condition[batch].to(x_n.dtype), x_n], dim=-1)
        shift, scale, gate = self.mlp(inputs).chunk(3, dim=-1)
        if self.squash is not None:
            a = self.squash.abs().clamp_min(1e-5)
            x_in = torch.tanh(a * x_n) * (1.0 + scale) / a + shift
        else:
            x_in = x_n * (1.0 + scale) + shift
        return x_in, torch.tanh(self.alpha * gate)


class EquivariantAttention(nn.Module):
    """One ET layer: pre-norm equivariant multi-head attention (paper eqs. 4-9, Fig. 1c-d).

    Args:
        width: feature size F (scalars ``[N, F]``, vectors ``[N, 3, F]``); divisible by ``num_heads``.
        num_rbf: radial basis size R.
        num_heads: attention heads H (head size F / H).
        distance_influence: where the distance filters enter: ``"keys"``, ``"values"``, ``"both"``, ``"none"``.
        activation: activation of the distance filters (name in :data:`ACTIVATIONS`).
        attn_activation: activation applied to the attention weights (SiLU in the paper, no softmax).
        cutoff: Angstrom; the attention weights are multiplied by the cosine cutoff.
        vector_cutoff: multiply the values (scalar and vector messages) by the cutoff instead of the
            attention weights (TorchMD-NET's ``vector_cutoff``; makes the energy smooth at the cutoff).
        condition_dim, modulation: adaLN conditioning (0: none), see :class:`AdaLN`.
        drop_path: stochastic-depth probability of the layer's update (training only).

    ``forward`` takes edges *with* self loops: ``edge_index`` ``[2, E]`` (src, dst), ``length`` ``[E]``,
    ``edge_rbf`` ``[E, R]``, ``unit`` ``[E, 3]`` (zero on self loops) and returns ``(dx [N, F], dvec [N, 3, F])``.
    """

    def __init__(
        self,
        width: int,
        num_rbf: int,
        num_heads: int,
        distance_influence: str,
        activation: str,
        attn_activation: str,
        cutoff: float,
        vector_cutoff: bool = False,
        condition_dim: int = 0,
        modulation: str = "tanh",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.width = width
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.cutoff = cutoff
        self.vector_cutoff = vector_cutoff
        self.drop_path = DropPath(drop_path)  # per-atom stochastic depth of the layer's update
        self.act = ACTIVATIONS[activation]()
        self.attn_act = ACTIVATIONS[attn_activation]()
        self.norm = nn.LayerNorm(width)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, 3 * width)
        self.o_proj = nn.Linear(width, 3 * width)
        self.vec_proj = nn.Linear(width, 3 * width, bias=False)
        self.dk_proj = nn.Linear(num_rbf, width) if distance_influence in ("keys", "both") else None
        self.dv_proj = nn.Linear(num_rbf, 3 * width) if distance_influence in ("values", "both") else None
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.vec_proj, self.dk_proj, self.dv_proj):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        self.adaln = AdaLN(width, condition_dim, modulation) if condition_dim > 0 else None

    def forward(
        self,
        x: Tensor,
        vec: Tensor,
        edge_index: Tensor,
        length: Tensor,
        edge_rbf: Tensor,
        unit: Tensor,
        condition: Tensor | None = None,
        batch: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        n, heads, hd = x.size(0), self.num_heads, self.head_dim
        x_in = self.norm(x)
        gate = None
        if condition is not None:
            x_in, gate = self.adaln(x_in, condition, batch)
        q = self.q_proj(x_in).view(n, heads, hd)
        k = self.k_proj(x_in).view(n, heads, hd)
        v = self.v_proj(x_in).view(n, heads, 3 * hd)
        vec1, vec2, vec3 = torch.split(self.vec_proj(vec), self.width, dim=-1)  # each [N, 3, F]
        vec_dot = (vec1 * vec2).sum(dim=1)  # [N, F]

        src, dst = edge_index  # gathers use index_select: its backward (index_add) is cheaper than indexing's
        envelope = cosine_cutoff(length, self.cutoff).unsqueeze(-1)  # [E, 1]
        qk = q.index_select(0, dst) * k.index_select(0, src)  # [E, H, hd]
        if self.dk_proj is not None:
            qk = qk * self.act(self.dk_proj(edge_rbf)).view(-1, heads, hd)
        attn = self.attn_act(qk.sum(dim=-1))  # [E, H]
        v_src = v.index_select(0, src)  # [E, H, 3 hd]
        if self.vector_cutoff:
            v_src = v_src * envelope.unsqueeze(-1)
        else:
            attn = attn * envelope
        if self.dv_proj is not None:
            v_src = v_src * self.act(self.dv_proj(edge_rbf)).view(-1, heads, 3 * hd)
        s_msg, g_vec, g_dir = torch.split(v_src, hd, dim=-1)  # each [E, H, hd]
        s_msg = (s_msg * attn.unsqueeze(-1)).reshape(-1, self.width)  # [E, F]
        vec_heads = vec.view(n, 3, heads, hd).index_select(0, src)  # [E, 3, H, hd]
        v_msg = vec_heads * g_vec.unsqueeze(1) + g_dir.unsqueeze(1) * unit.view(-1, 3, 1, 1)
        y = scatter(s_msg, dst, dim=0, dim_size=n, reduce="sum")  # [N, F]
        w = scatter(v_msg.reshape(-1, 3, self.width), dst, dim=0, dim_size=n, reduce="sum")  # [N, 3, F]

        o1, o2, o3 = torch.split(self.o_proj(y), self.width, dim=-1)
        dx = vec_dot * o2 + o3
        dvec = vec3 * o1.unsqueeze(1) + w
        if gate is not None:
            dx = gate * dx
        return self.drop_path(dx, dvec)


@torch.compiler.disable  # reads a value on the host: kept out of the compiled graph
def _check_num_embeddings(z: Tensor, num_embeddings: int) -> None:
    if z.numel() and int(z.max()) >= num_embeddings:
        raise ValueError(f"atomic number {int(z.max())} >= num_embeddings={num_embeddings} (ET's embedding rows): "
                         "raise --model.backbone.init_args.num_embeddings")


class ET(Backbone):
    """Equivariant transformer backbone (TorchMD-NET's ``TorchMD_ET``, see the module docstring).

    Defaults are TorchMD-NET 3.1's (and the paper's QM9 setting apart from the paper's 256 width;
    ``configs/backbones/et.yaml`` lists the papers' presets).

    Args:
        width: feature size F (TorchMD-NET ``embedding_dimension`` / ``hidden_channels``).
        num_interactions: attention layers (TorchMD-NET ``num_layers``; formerly ``num_layers`` here too).
        num_rbf: exponential-normal radial functions.
        num_heads: attention heads; must divide ``width``.
        cutoff: upper cutoff in Angstrom (TorchMD-NET ``cutoff_upper``; ``cutoff_lower`` is 0).
        trainable_rbf: learn the RBF means and widths (parameters rather than buffers).
        neighbor_embedding: use the neighbour embedding (paper eq. 3).
        distance_influence: ``"keys"``, ``"values"``, ``"both"`` or ``"none"``.
        activation, attn_activation: ``"silu"``, ``"ssp"``, ``"tanh"`` or ``"sigmoid"``.
        vector_cutoff: cutoff on the values instead of the attention weights (smooth at the cutoff).
        num_embeddings: rows of the element embedding tables, i.e. atomic numbers
            ``0 .. num_embeddings - 1`` (TorchMD-NET's ``max_z``, and formerly ours; SchNet and PaiNN
            take the largest atomic number, ``max_atomic_number``, instead). Kept as rows so that
            TorchMD-NET's hyperparameters give the same parameter count.
        max_num_neighbors: optional neighbour cap (exceeding it raises; see :mod:`atomzoo.nn.graph`).
        condition_dim: size of the per-molecule condition (0: none); > 0 adds SCD's adaLN to every layer
            and ``self.conditioning`` (mask token + condition layer norm, :mod:`atomzoo.nn.conditioning`):
            ``condition=None`` then runs every molecule with the mask token, as SCD's clean pass and
            fine-tuning do.
        modulation: adaLN modulation, ``"tanh"`` (SCD official code) or ``"affine"`` (DiT).
        drop_path: stochastic-depth probability per layer (SCD: 0.1 pretraining); objectives change it
            with :meth:`~atomzoo.backbones.base.Backbone.set_drop_path` (SCD fine-tuning: 0.15 -> 0.1).

    Raises:
        ValueError: for ``width`` not divisible by ``num_heads``, an unknown activation,
            distance influence or modulation, a negative ``drop_path`` or ``drop_path >= 1``.

    Output: scalars ``[N, F]`` (invariant, after the final layer norm), vectors ``[N, 3, F]``
    (equivariant, x/y/z on dim 1); ``graph`` is the radius graph without self loops.
    """

    periodic = True  # all geometry comes from self.graph(data), periodic images included
    supports_mask = True  # masked atoms get mask_embedding / neighbor_mask_embedding (docs/backbones.md)
    renamed_arguments = {"num_layers": "num_interactions", "max_z": "num_embeddings"}  # one name per meaning

    def __init__(
        self,
        width: int = 128,
        num_interactions: int = 6,
        num_rbf: int = 50,
        num_heads: int = 8,
        cutoff: float = 5.0,
        trainable_rbf: bool = True,
        neighbor_embedding: bool = True,
        distance_influence: str = "both",
        activation: str = "silu",
        attn_activation: str = "silu",
        vector_cutoff: bool = False,
        num_embeddings: int = 100,
        max_num_neighbors: int | None = None,
        condition_dim: int = 0,
        modulation: str = "tanh",
        drop_path: float = 0.0,
    ) -> None:
        super().__init__(
            width=width,
            cutoff=cutoff,
            vector_width=width,
            condition_dim=condition_dim,
            max_num_neighbors=max_num_neighbors,
        )
        if width % num_heads != 0:
            raise ValueError(f"width ({width}) must be divisible by num_heads ({num_heads})")
        for name, act in (("activation", activation), ("attn_activation", attn_activation)):
            if act not in ACTIVATIONS:
                raise ValueError(f"{name} must be one of {sorted(ACTIVATIONS)}, got {act!r}")
        if distance_influence not in DISTANCE_INFLUENCE:
            raise ValueError(f"distance_influence must be one of {DISTANCE_INFLUENCE}, got {distance_influence!r}")
        if modulation not in MODULATIONS:
            raise ValueError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.num_interactions = int(num_interactions)
        self.num_embeddings = int(num_embeddings)
        self.embedding = nn.Embedding(self.num_embeddings, width)
        self.rbf = ExpNormalRBF(num_rbf, cutoff, trainable_rbf)
        self.neighbor_embedding = NeighborEmbedding(width, num_rbf, self.num_embeddings) if neighbor_embedding else None
        self.layers = nn.ModuleList(
            EquivariantAttention(
                width, num_rbf, num_heads, distance_influence, activation, attn_activation, cutoff,
                vector_cutoff, condition_dim, modulation, drop_path,
            )
            for _ in range(num_interactions)
        )
        self.out_norm = nn.LayerNorm(width)
        # the condition's mask token and layer norm (shared machinery, see atomzoo.nn.conditioning); the
        # per-layer adaLN is each layer's own AdaLN above
        self.conditioning = condition_modules(0, width, condition_dim)
        # atom masking (data.atom_mask): learned embeddings replace a masked atom's element in both tables
        self.mask_embedding = nn.Parameter(torch.randn(width))
        self.neighbor_mask_embedding = nn.Parameter(torch.randn(width)) if neighbor_embedding else None

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        x, vec, edges, cond, graph = self.layer_inputs(data, condition)
        for layer in self.layers:
            dx, dvec = layer(x, vec, *edges, cond, data.batch)
            x = x + dx
            vec = vec + dvec
        return BackboneOutput(scalars=self.out_norm(x), vectors=vec, graph=graph)

    def layer_inputs(self, data, condition: Tensor | None = None):
        """What the first attention layer takes: ``(x [N, F], vec [N, 3, F] zeros, (edge_index, length,
        edge_rbf, unit) with self loops, the prepared condition or None, graph)`` (also used by
        :class:`atomzoo.backbones.scd_et.SCDET`, whose layers differ only around the attention)."""
        self.check_condition(condition, num_graphs(data))
        z = data.z
        _check_num_embeddings(z, self.num_embeddings)
        graph = self.graph(data)
        n = z.size(0)
        x = self.apply_atom_mask(self.embedding(z), data, self.mask_embedding)
        edge_rbf = self.rbf(graph.length)
        if self.neighbor_embedding is not None:
            envelope = cosine_cutoff(graph.length, self.cutoff)
            neighbours = self.apply_atom_mask(self.neighbor_embedding.embedding(z), data, self.neighbor_mask_embedding)
            x = self.neighbor_embedding(z, x, graph, edge_rbf, envelope, neighbours)
        cond = self.conditioning.prepare(condition, num_graphs(data)) if self.conditioning is not None else None
        # attention runs over the graph plus self loops (distance 0, zero direction), as TorchMD-NET
        loops = torch.arange(n, device=z.device)
        edge_index = torch.cat([graph.edge_index, loops.expand(2, n)], dim=1)
        length = torch.cat([graph.length, graph.length.new_zeros(n)])
        edge_rbf = torch.cat([edge_rbf, self.rbf(length.new_zeros(n))])
        unit = torch.cat([graph.unit, graph.vec.new_zeros(n, 3)])
        vec = x.new_zeros(n, 3, self.width)
        return x, vec, (edge_index, length, edge_rbf, unit), cond, graph


__all__ = ["ET", "EquivariantAttention", "ExpNormalRBF", "NeighborEmbedding", "AdaLN"]
