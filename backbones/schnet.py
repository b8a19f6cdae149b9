"""SchNet (Schuett et al., J. Chem. Phys. 148, 241722 (2018), arXiv 1712.06113).

Continuous-filter convolutions: a filter-generating network maps the Gaussian-expanded interatomic
distance to a filter that multiplies neighbour features elementwise; a cosine envelope makes the
filter vanish smoothly at the cutoff. Interaction blocks update atom features residually.
Invariant backbone: scalar features only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from atomzoo.nn.batch import num_graphs
from atomzoo.nn.conditioning import condition_modules
from atomzoo.nn.init import xavier_linear_
from atomzoo.nn.droppath import DropPath
from atomzoo.nn.radial import GaussianRBF, ShiftedSoftplus, cosine_cutoff

from .base import Backbone, BackboneOutput


class CFConv(nn.Module):
    """Continuous-filter convolution: ``x_i' = W2 sum_j (W1 x_j) * filter(d_ij) * fcut(d_ij)``.

    The filter depends on the distance only, so it is computed once per atom pair (``P`` pairs, one
    direction each, :meth:`atomzoo.nn.graph.Graph.pair_mask`) and used for both messages of the pair;
    this halves the filter network's cost, which dominates SchNet's step (two dense layers per edge
    against one gather and one scatter), and changes nothing in the result but the summation order.
    """

    def __init__(self, width: int, num_filters: int, num_basis: int) -> None:
        super().__init__()
        self.filter_net = nn.Sequential(
            nn.Linear(num_basis, num_filters), ShiftedSoftplus(), nn.Linear(num_filters, num_filters)
        )
        self.in_proj = nn.Linear(width, num_filters, bias=False)
        self.out_proj = nn.Linear(num_filters, width)

    def forward(self, x: Tensor, pairs: "PairGraph") -> Tensor:
        """``x`` ``[N, F]`` -> ``[N, F]``; ``pairs`` as built by :meth:`PairGraph.of`."""
        filters = self.filter_net(pairs.rbf) * pairs.envelope  # [P, num_filters]
        h = self.in_proj(x)
        num_pairs, width = filters.shape
        # messages to dst from src, then to src from dst, both with the pair's filter: [2, P, filters]
        messages = h.index_select(0, pairs.sender).view(2, num_pairs, width) * filters
        # summed in the messages' dtype: under bf16 autocast h is bf16 and the enveloped filters float32
        out = messages.new_zeros(x.size(0), width).index_add_(0, pairs.receiver, messages.view(2 * num_pairs, width))
        return self.out_proj(out)


class PairGraph:
    """What SchNet's convolutions need of the radius graph, one entry per atom pair.

    Attributes:
        sender, receiver: ``[2P]`` long: the ``P`` selected edges ``(src, dst)`` followed by their
            reverses ``(dst, src)``; a message flows from ``sender`` to ``receiver``.
        rbf: ``[P, R]`` radial basis of the pair distances.
        envelope: ``[P, 1]`` cosine cutoff of the pair distances.
    """

    def __init__(self, sender: Tensor, receiver: Tensor, rbf: Tensor, envelope: Tensor) -> None:
        self.sender, self.receiver, self.rbf, self.envelope = sender, receiver, rbf, envelope

    @classmethod
    @torch.compiler.disable  # boolean selection: data-dependent size, eager under torch.compile
    def of(cls, graph, rbf: nn.Module, cutoff: float) -> "PairGraph":
        pair = graph.pair_mask()
        src, dst = graph.edge_index[:, pair]
        length = graph.length[pair]
        return cls(torch.cat([src, dst]), torch.cat([dst, src]), rbf(length), cosine_cutoff(length, cutoff).unsqueeze(-1))


class SchNetInteraction(nn.Module):
    """Interaction block: cfconv -> shifted softplus -> linear; the caller adds it residually."""

    def __init__(self, width: int, num_filters: int, num_basis: int) -> None:
        super().__init__()
        self.conv = CFConv(width, num_filters, num_basis)
        self.act = ShiftedSoftplus()
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, pairs: PairGraph) -> Tensor:
        return self.out(self.act(self.conv(x, pairs)))


class SchNet(Backbone):
    """SchNet backbone.

    Defaults are the JCP 2018 QM9 setting (the same as PyTorch Geometric's ``SchNet``): 128 features,
    128 filters, 6 interactions, 50 Gaussians on [0, 10] A, 10 A cosine cutoff.

    Args:
        width: atom feature size F (``hidden_channels`` in PyG).
        num_filters: filter size of the continuous-filter convolutions.
        num_interactions: number of interaction blocks.
        num_rbf: number of Gaussian radial basis functions on ``[0, cutoff]``.
        cutoff: interaction radius in Angstrom.
        max_atomic_number: largest atomic number the element embedding covers (its rows are
            ``0 .. max_atomic_number``; formerly ``max_z``).
        max_num_neighbors: optional neighbour cap (exceeding it raises; see :mod:`atomzoo.nn.graph`).
        condition_dim: size of the per-molecule condition (0: none: plain SchNet). When > 0 every
            interaction reads the adaLN-modulated, normalised input ``x_mod`` and its output is gated,
            ``x <- x + g * interaction(x_mod)`` (:mod:`atomzoo.nn.conditioning`, ``self.conditioning``);
            ``condition=None`` uses the learned mask token.

    Masking: ``data.atom_mask`` (``[N]`` bool) replaces the element embedding of masked atoms by the
    learned ``mask_embedding`` ``[width]`` (``supports_mask = True``).

    Initialisation (:meth:`reset_parameters`) follows PyG's ``SchNet.reset_parameters`` and
    schnetpack's ``Dense``: element embedding N(0, 1) (``nn.Embedding``'s default; the mask embedding
    too), every linear layer Xavier-uniform with zero bias.

    Output: scalars ``[N, width]``; no vector features.
    """

    periodic = True  # all geometry comes from self.graph(data), periodic images included
    renamed_arguments = {"max_z": "max_atomic_number"}  # one name per meaning (ET's old max_z counted rows)
    supports_mask = True

    def __init__(
        self,
        width: int = 128,
        num_filters: int = 128,
        num_interactions: int = 6,
        num_rbf: int = 50,
        cutoff: float = 10.0,
        max_atomic_number: int = 100,
        max_num_neighbors: int | None = None,
        condition_dim: int = 0,
    ) -> None:
        super().__init__(width=width, cutoff=cutoff, condition_dim=condition_dim, max_num_neighbors=max_num_neighbors)
        self.embedding = nn.Embedding(max_atomic_number + 1, width)
        self.rbf = GaussianRBF(num_rbf, 0.0, cutoff)
        self.interactions = nn.ModuleList(
            SchNetInteraction(width, num_filters, num_rbf) for _ in range(num_interactions)
        )
        self.conditioning = condition_modules(num_interactions, width, condition_dim)
        self.mask_embedding = nn.Parameter(torch.empty(width))
        self.drop_path = DropPath()  # per-atom stochastic depth of each layer's update; rate set by objectives
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyG / schnetpack initialisation (see the class docstring); adaLN modules as in DiT."""
        self.embedding.reset_parameters()
        nn.init.normal_(self.mask_embedding)
        xavier_linear_(self.interactions)

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        self.check_condition(condition, num_graphs(data))
        graph = self.graph(data)
        pairs = PairGraph.of(graph, self.rbf, self.cutoff)
        x = self.apply_atom_mask(self.embedding(data.z), data, self.mask_embedding)
        cond = self.conditioning.prepare(condition, num_graphs(data)) if self.conditioning is not None else None
        for i, interaction in enumerate(self.interactions):
            if cond is None:
                x = x + self.drop_path(interaction(x, pairs))
            else:
                x_mod, gate = self.conditioning[i](x, cond, data.batch)
                x = x + self.drop_path(gate * interaction(x_mod, pairs))
        return BackboneOutput(scalars=x, vectors=None, graph=graph)
