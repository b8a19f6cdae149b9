"""A backbone of your own, plugged into every objective of the zoo with nothing but a class path.

This file lives outside the zoo's packages on purpose: it stands for *your* module. Put its folder on
``PYTHONPATH`` (or install your package) and run, for example::

    PYTHONPATH=examples zoo fit -c configs/data/qm9.yaml -c configs/objectives/regression.yaml \\
        --model.backbone.class_path custom_backbone.DistanceMPNN --model.backbone.init_args.width 64

    PYTHONPATH=examples zoo fit -c configs/data/qm9.yaml -c configs/objectives/scd.yaml \\
        --data.targets null --model.backbone.class_path custom_backbone.DistanceMPNN

The contract (docs/backbones.md): subclass :class:`atomzoo.backbones.Backbone`, declare ``width`` and
``cutoff`` (and ``vector_width`` / ``condition_dim`` if you have vector features or take a
condition), and return a :class:`atomzoo.backbones.BackboneOutput` from ``forward(data, condition=None)``.
This one is invariant and returns no vector features (denoising's equivariant noise head then uses
its scalars and the graph's edge vectors). With ``condition_dim > 0`` it conditions every layer with
the shared adaLN machinery (``atomzoo.nn.conditioning``), which self-conditioned denoising needs.
It supports atom masking (JEPA's context view): two lines, ``supports_mask = True`` and the
``apply_atom_mask`` call in ``forward``. Every distance it uses comes from ``self.graph(data)``, which
adds the periodic images of crystals, so it declares ``periodic = True`` and trains on periodic
structures too (ASE files with a cell). Its ``DropPath`` lets objectives' ``drop_path`` option reach it.

Check it against the contract in three lines (``atomzoo.backbones.contract``)::

    from atomzoo.backbones.contract import check_backbone
    from custom_backbone import DistanceMPNN
    check_backbone(lambda: DistanceMPNN(width=16, num_interactions=2))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from atomzoo.backbones import Backbone, BackboneOutput
from atomzoo.nn.batch import num_graphs
from atomzoo.nn.conditioning import condition_modules
from atomzoo.nn.droppath import DropPath
from atomzoo.nn.radial import GaussianRBF, cosine_cutoff


class DistanceMPNN(Backbone):
    """A small distance-based message-passing network (invariant).

    ``h_i <- h_i + MLP([h_i, sum_j MLP_e(h_j, rbf(d_ij)) * fcut(d_ij)])`` for ``num_interactions`` layers.

    Args:
        width: feature size F.
        num_interactions: message-passing layers.
        num_rbf: Gaussians on ``[0, cutoff]``.
        cutoff: radius in Angstrom.
        condition_dim: size of the per-molecule condition (0: none); > 0 adds adaLN to every layer.
    """

    periodic = True  # every distance comes from self.graph(data), periodic images included
    supports_mask = True  # forward honours data.atom_mask (JEPA's masked atoms)

    def __init__(self, width: int = 64, num_interactions: int = 3, num_rbf: int = 16, cutoff: float = 5.0,
                 condition_dim: int = 0) -> None:
        super().__init__(width=width, cutoff=cutoff, condition_dim=condition_dim)  # no vector features
        self.embedding = nn.Embedding(101, width)  # found by objectives that freeze element embeddings
        self.mask_embedding = nn.Parameter(torch.randn(width))  # what a masked atom looks like
        self.rbf = GaussianRBF(num_rbf, 0.0, cutoff)
        self.message = nn.ModuleList(
            nn.Sequential(nn.Linear(width + num_rbf, width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(num_interactions)
        )
        self.update = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * width, width), nn.SiLU(), nn.Linear(width, width))
            for _ in range(num_interactions)
        )
        self.conditioning = condition_modules(num_interactions, width, condition_dim)  # None when condition_dim == 0
        self.drop_path = DropPath()  # stochastic depth of each layer's update; objectives set its rate (SCD: 0.1)

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        self.check_condition(condition, num_graphs(data))  # raises if condition_dim == 0
        graph = self.graph(data)
        rbf = self.rbf(graph.length)
        envelope = cosine_cutoff(graph.length, self.cutoff).unsqueeze(-1)
        h = self.apply_atom_mask(self.embedding(data.z), data, self.mask_embedding)  # no-op without a mask
        cond = self.conditioning.prepare(condition, num_graphs(data)) if self.conditioning is not None else None
        for i, (message, update) in enumerate(zip(self.message, self.update)):
            # adaLN of the layer's normalised input, gate on its update (mask token when condition is None)
            x, gate = self.conditioning[i](h, cond, data.batch) if cond is not None else (h, 1.0)
            m = message(torch.cat([x[graph.src], rbf], dim=-1)) * envelope
            aggregated = scatter(m, graph.dst, dim=0, dim_size=h.size(0), reduce="sum")
            h = h + self.drop_path(gate * update(torch.cat([x, aggregated], dim=-1)))
        return BackboneOutput(scalars=h, vectors=None, graph=graph)
