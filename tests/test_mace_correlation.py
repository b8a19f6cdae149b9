"""MACE's correlation order is per layer: ``correlation=[3, 1]`` builds a first layer of body order 4 and
a second of body order 2, and computes mace-torch's ScaleShiftMACE with the same list (issue 31: a
mutant giving every layer the first layer's order survived every test)."""

import importlib.util

import numpy as np
import pytest
import torch

from atomzoo.nn.graph import build_graph

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mace") is None, reason="mace-torch is not installed")

KW = dict(cutoff=4.0, num_bessel=4, num_polynomial_cutoff=5, max_ell=1, correlation=[3, 1], num_interactions=2,
          hidden_irreps="4x0e+4x1o", radial_MLP=[8], avg_num_neighbors=3.0, dtype="float64")  # fmt: skip


@pytest.mark.filterwarnings("ignore:The TorchScript type system")
def test_each_layer_has_its_own_correlation_order_as_in_mace_torch():
    from torch_geometric.data import Batch, Data

    from atomzoo.backbones import MACE
    from atomzoo.backbones.mace import import_mace

    ours = MACE(**KW)
    assert [p.symmetric_contractions.contractions[0].correlation for p in ours.products] == [3, 1]
    modules, o3 = import_mace()
    torch.manual_seed(5)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = modules.ScaleShiftMACE(
            r_max=KW["cutoff"], num_bessel=KW["num_bessel"], num_polynomial_cutoff=KW["num_polynomial_cutoff"],
            max_ell=KW["max_ell"], interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"], num_interactions=2,
            num_elements=5, hidden_irreps=o3.Irreps(KW["hidden_irreps"]), MLP_irreps=o3.Irreps("8x0e"),
            atomic_energies=np.zeros(5), avg_num_neighbors=KW["avg_num_neighbors"], atomic_numbers=[1, 6, 7, 8, 9],
            correlation=[3, 1], gate=torch.nn.functional.silu, radial_MLP=KW["radial_MLP"],
            keep_last_layer_irreps=True, use_reduced_cg=False, atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        )  # fmt: skip
    finally:
        torch.set_default_dtype(previous)
    ref_state = ref.state_dict()
    ours.load_state_dict({k: ref_state[k] for k in ours.state_dict() if k != "mask_embedding"}, strict=True)
    gen = torch.Generator().manual_seed(0)
    molecules = [Data(z=torch.tensor(z), pos=torch.rand(len(z), 3, generator=gen, dtype=torch.float64) * 2.5)
                 for z in ([6, 1, 1, 8], [7, 1, 1, 1, 9])]  # fmt: skip
    batch = Batch.from_data_list(molecules)
    graph = build_graph(batch.pos, batch.batch, KW["cutoff"])
    n_edges = graph.edge_index.size(1)
    data = {"positions": batch.pos.clone(), "node_attrs": ours.node_attrs(batch.z, torch.float64),
            "edge_index": graph.edge_index, "shifts": torch.zeros(n_edges, 3, dtype=torch.float64),
            "unit_shifts": torch.zeros(n_edges, 3, dtype=torch.float64),
            "cell": torch.zeros(3 * batch.num_graphs, 3, dtype=torch.float64), "batch": batch.batch, "ptr": batch.ptr}
    node_feats = ref(data, training=False, compute_force=False)["node_feats"].detach()
    with torch.no_grad():
        out = ours(batch)
    layers = node_feats.split(o3.Irreps(KW["hidden_irreps"]).dim, dim=-1)
    expected = torch.cat([layer[:, :4] for layer in layers], dim=-1)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(out.scalars, expected, rtol=0, atol=1e-12)
