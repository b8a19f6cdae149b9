"""Reference implementations plugged into the zoo through the public custom-backbone contract.

Benchmark code, not part of the library: ``benchmarks/matrices/parity.yaml`` puts this folder on
``PYTHONPATH`` (its ``pythonpath`` key) and selects these classes with
``--model.backbone.class_path parity_adapters.<Name>``, exactly as a user plugs in their own backbone
(docs/backbones.md). Each adapter builds the peer's own modules with the peer's own initialisation
and feeds them *our* radius graph (``self.graph(data)``), so both sides of a parity row see the same
neighbour list; heads, loss, optimiser and schedule come from the zoo.

* :class:`PygSchNet` -- PyTorch Geometric's SchNet blocks (``torch_geometric.nn.models.schnet``:
  ``InteractionBlock``, ``GaussianSmearing``; embedding ``nn.Embedding(100, F)``), composed as
  ``torch_geometric.nn.models.SchNet.forward`` composes them (without its readout).
* :class:`SchnetpackPaiNN` -- schnetpack 2.x ``schnetpack.representation.PaiNN`` with
  ``BesselRBF`` (``sin(n pi d / rc) / d``, the paper's basis and ours) and ``CosineCutoff``.
* :class:`MaceTorch` -- mace-torch's ``mace.modules.MACE`` model (the whole model, readouts
  unused), ``keep_last_layer_irreps=True``; its ``node_feats`` output gives the same features as
  our wrapper (0e channels of every layer, 1o of the last).
* :class:`TorchmdET` -- torchmd-net 3.1's ``TorchMD_ET`` representation (its own neighbour list).

None of them supports atom masking or conditioning (``supports_mask = False``, ``condition_dim=0``):
the parity benchmark uses supervised regression only.

schnetpack 2.1.1's package ``__init__`` imports its data pipeline, which fails with torch >= 2.6
(``torch.utils.data.dataloader.T_co`` is gone), so :func:`import_schnetpack_painn` imports only the
representation modules, from a namespace stub of the package. Install it with
``pip install --no-deps schnetpack==2.1.1`` (its representation code needs only torch and numpy).
"""

from __future__ import annotations

import importlib.util
import sys
import types

import torch
from torch import Tensor, nn

from atomzoo.backbones import Backbone, BackboneOutput
from atomzoo.nn.batch import num_graphs


class PygSchNet(Backbone):
    """PyG's SchNet interaction blocks on our graph. Arguments as :class:`atomzoo.backbones.SchNet`.

    ``same_init_as_ours=True``: start from exactly the weights :class:`atomzoo.backbones.SchNet` would
    draw at this point of the random stream (a twin is built first, its weights copied into PyG's
    blocks), and leave the global random state where building ours leaves it, so that the heads,
    the data order and every later draw are those of the ``ours`` run with the same seed. The two
    runs then differ only in the code that computes the same function (summation order).

    Output: scalars ``[N, width]``, no vectors.
    """

    def __init__(self, width: int = 128, num_filters: int = 128, num_interactions: int = 6, num_rbf: int = 50,
                 cutoff: float = 10.0, same_init_as_ours: bool = False) -> None:
        super().__init__(width=width, cutoff=cutoff)
        from torch_geometric.nn.models.schnet import GaussianSmearing, InteractionBlock

        twin = None
        if same_init_as_ours:
            from atomzoo.backbones import SchNet

            twin = SchNet(width=width, num_filters=num_filters, num_interactions=num_interactions, num_rbf=num_rbf,
                          cutoff=cutoff)
            rng_after_ours = torch.get_rng_state()
        self.embedding = nn.Embedding(100, width, padding_idx=0)  # as torch_geometric's SchNet
        self.distance_expansion = GaussianSmearing(0.0, cutoff, num_rbf)
        self.interactions = nn.ModuleList(
            InteractionBlock(width, num_rbf, num_filters, cutoff) for _ in range(num_interactions)
        )
        self.embedding.reset_parameters()  # PyG's SchNet.reset_parameters; blocks reset themselves
        if twin is not None:
            names = {"mlp.0": "conv.filter_net.0", "mlp.2": "conv.filter_net.2", "conv.lin1": "conv.in_proj",
                     "conv.nn.0": "conv.filter_net.0", "conv.nn.2": "conv.filter_net.2",  # conv.nn is mlp
                     "conv.lin2": "conv.out_proj", "lin": "out"}
            theirs = twin.state_dict()
            with torch.no_grad():
                self.embedding.weight.copy_(theirs["embedding.weight"][:100])
                for key, param in self.interactions.state_dict().items():
                    block, rest = key.split(".", 1)
                    module, kind = rest.rsplit(".", 1)
                    param.copy_(theirs[f"interactions.{block}.{names[module]}.{kind}"])
            torch.set_rng_state(rng_after_ours)

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        self.check_condition(condition, num_graphs(data))
        graph = self.graph(data)
        edge_attr = self.distance_expansion(graph.length)
        h = self.embedding(data.z)
        for block in self.interactions:  # PyG: h = h + interaction(h, edge_index, edge_weight, edge_attr)
            h = h + block(h, graph.edge_index, graph.length, edge_attr)
        return BackboneOutput(scalars=h, vectors=None, graph=graph)


def import_schnetpack_painn():
    """``(schnetpack.representation.painn, schnetpack.nn)`` without running ``schnetpack/__init__``."""
    if "schnetpack" not in sys.modules:
        spec = importlib.util.find_spec("schnetpack")
        if spec is None:
            raise ImportError("schnetpack is not installed: pip install --no-deps schnetpack==2.1.1")
        stub = types.ModuleType("schnetpack")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["schnetpack"] = stub
    import schnetpack.nn as spk_nn
    import schnetpack.representation.painn as spk_painn

    return spk_painn, spk_nn


class SchnetpackPaiNN(Backbone):
    """schnetpack 2.x PaiNN on our graph. Arguments as :class:`atomzoo.backbones.PaiNN`.

    schnetpack's pair convention: ``r_ij = pos[idx_j] - pos[idx_i]``, messages from ``j`` summed at
    ``i``; with our ``edge_index = [src, dst]`` that is ``idx_j = src``, ``idx_i = dst`` and
    ``r_ij = graph.vec`` (``pos[src] - pos[dst]``).

    Output: scalars ``[N, F]``, vectors ``[N, 3, F]``.
    """

    def __init__(self, width: int = 128, num_interactions: int = 3, num_rbf: int = 20, cutoff: float = 5.0) -> None:
        super().__init__(width=width, cutoff=cutoff, vector_width=width)
        spk_painn, spk_nn = import_schnetpack_painn()
        self.painn = spk_painn.PaiNN(
            n_atom_basis=width,
            n_interactions=num_interactions,
            radial_basis=spk_nn.radial.BesselRBF(n_rbf=num_rbf, cutoff=cutoff),
            cutoff_fn=spk_nn.cutoff.CosineCutoff(cutoff),
        )

    def element_embedding_parameters(self) -> list[nn.Parameter]:
        return list(self.painn.embedding.parameters())

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        self.check_condition(condition, num_graphs(data))
        graph = self.graph(data)
        src, dst = graph.edge_index
        out = self.painn({"_atomic_numbers": data.z, "_Rij": graph.vec, "_idx_i": dst, "_idx_j": src})
        return BackboneOutput(scalars=out["scalar_representation"], vectors=out["vector_representation"], graph=graph)


class MaceTorch(Backbone):
    """mace-torch's ``MACE`` model on our graph (float32 unless torch's default dtype says otherwise).

    Arguments as :class:`atomzoo.backbones.MACE` (the subset used by the benchmark). The model's
    readouts and atomic energies exist but are unused: the zoo's head replaces them.

    Output: scalars ``[N, num_interactions * C0]``, vectors ``[N, 3, C1]`` (x, y, z; e3nn 0.4.4's
    ``1o`` component order is x, y, z, checked in ``tests/test_backbones.py``).
    """

    renamed_arguments = {"r_max": "cutoff"}  # as atomzoo.backbones.MACE

    def __init__(self, cutoff: float = 5.0, num_bessel: int = 8, num_polynomial_cutoff: int = 5, max_ell: int = 3,
                 correlation: int = 3, num_interactions: int = 2, hidden_irreps: str = "128x0e+128x1o",
                 radial_MLP: list[int] = (64, 64, 64), avg_num_neighbors: float = 15.6,
                 atomic_numbers: list[int] = (1, 6, 7, 8, 9)) -> None:
        from atomzoo.backbones.mace import import_mace

        modules, o3 = import_mace()
        hidden = o3.Irreps(hidden_irreps)
        self.c0, self.c1 = hidden.count(o3.Irrep("0e")), hidden.count(o3.Irrep("1o"))
        super().__init__(width=num_interactions * self.c0, cutoff=cutoff, vector_width=self.c1)
        import numpy as np

        zs = sorted(int(z) for z in atomic_numbers)
        self.mace = modules.MACE(
            r_max=cutoff, num_bessel=num_bessel, num_polynomial_cutoff=num_polynomial_cutoff, max_ell=max_ell,
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
            num_interactions=num_interactions, num_elements=len(zs), hidden_irreps=hidden,
            MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(zs)), avg_num_neighbors=avg_num_neighbors,
            atomic_numbers=zs, correlation=correlation, gate=torch.nn.functional.silu,
            radial_MLP=[int(h) for h in radial_MLP], keep_last_layer_irreps=True,
        )
        table = torch.full((max(zs) + 1,), -1, dtype=torch.long)
        table[torch.tensor(zs)] = torch.arange(len(zs))
        self.register_buffer("z_to_index", table, persistent=False)
        self.layer_dim = hidden.dim
        self.num_elements = len(zs)

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        self.check_condition(condition, num_graphs(data))
        graph = self.graph(data)
        e = graph.edge_index.size(1)
        dtype = data.pos.dtype
        inputs = {
            "positions": data.pos,
            "node_attrs": nn.functional.one_hot(self.z_to_index[data.z], self.num_elements).to(dtype),
            "edge_index": graph.edge_index,  # mace: [sender, receiver], vectors pos[receiver] - pos[sender]
            "shifts": data.pos.new_zeros(e, 3),
            "unit_shifts": data.pos.new_zeros(e, 3),
            "cell": data.pos.new_zeros(3 * num_graphs(data), 3),
            "batch": data.batch,
            "ptr": data.ptr if getattr(data, "ptr", None) is not None else torch.tensor([0, data.z.numel()]),
        }
        feats = self.mace(inputs, training=self.training, compute_force=False)["node_feats"]
        layers = feats.split(self.layer_dim, dim=-1)
        scalars = torch.cat([layer[:, : self.c0] for layer in layers], dim=-1)
        vectors = layers[-1][:, self.c0 : self.c0 + 3 * self.c1].reshape(-1, self.c1, 3).transpose(1, 2)
        return BackboneOutput(scalars=scalars, vectors=vectors, graph=graph)


class TorchmdET(Backbone):
    """torchmd-net 3.1's equivariant transformer representation (``TorchMD_ET``, built by its own
    ``create_model``). Arguments as :class:`atomzoo.backbones.ET` (the subset the benchmark uses).

    Unlike the other adapters it builds its own neighbour list (torchmd-net's ``OptimizedDistance``,
    every pair closer than the cutoff, as ours; ``max_num_neighbors`` 64 is above any QM9 atom's
    count within 5 A). Install outside the project environment (``torchmd-net-cpu`` would pin another
    torch): ``pip install --no-deps --target /tmp/tmdnet torchmd-net==3.1.0 warp-lang`` and put
    ``/tmp/tmdnet`` on ``PYTHONPATH``.

    Output: scalars ``[N, F]``, vectors ``[N, 3, F]``.
    """

    renamed_arguments = {"num_layers": "num_interactions"}  # as atomzoo.backbones.ET

    def __init__(self, width: int = 64, num_interactions: int = 3, num_rbf: int = 32, num_heads: int = 8,
                 cutoff: float = 5.0) -> None:
        super().__init__(width=width, cutoff=cutoff, vector_width=width)
        try:
            from torchmdnet.models.model import create_model
        except ImportError as err:
            raise ImportError("torchmd-net is not importable: pip install --no-deps --target /tmp/tmdnet "
                              "torchmd-net==3.1.0 warp-lang, then PYTHONPATH=/tmp/tmdnet") from err
        hparams = {
            "model": "equivariant-transformer", "embedding_dimension": width, "num_layers": num_interactions,
            "num_rbf": num_rbf, "rbf_type": "expnorm", "trainable_rbf": False, "activation": "silu",
            "attn_activation": "silu", "neighbor_embedding": True, "num_heads": num_heads,
            "distance_influence": "both", "cutoff_lower": 0.0, "cutoff_upper": cutoff, "max_z": 100,
            "max_num_neighbors": 64, "reduce_op": "add", "output_model": "Scalar", "prior_model": None,
            "derivative": False, "atom_filter": -1, "precision": 32, "equivariance_invariance_group": "O(3)",
            "static_shapes": False, "check_errors": True, "box_vecs": None, "vector_cutoff": False,
            "charge": False, "spin": False,
        }  # the papers' ET settings (configs/backbones/et.yaml), torchmd-net's argument names
        self.et = create_model(hparams).representation_model

    def element_embedding_parameters(self) -> list[nn.Parameter]:
        return list(self.et.embedding.parameters())

    def forward(self, data, condition: Tensor | None = None) -> BackboneOutput:
        self.check_condition(condition, num_graphs(data))
        graph = self.graph(data)  # for the heads (edge-based noise heads); the ET uses its own list
        x, vec, *_ = self.et(data.z, data.pos, data.batch)
        return BackboneOutput(scalars=x, vectors=vec, graph=graph)
