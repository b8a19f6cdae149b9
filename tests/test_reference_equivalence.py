"""Our backbones are their reference implementations: same function, same initial distributions.

SchNet initialises every tensor from the distribution PyTorch Geometric's SchNet uses (that it
computes the same function given the same weights is ``test_backbones.py::test_schnet_matches_pyg_schnet``,
float64, 1e-12). PaiNN with schnetpack 2.x PaiNN's weights mapped onto it gives schnetpack's features
(when schnetpack is installed; it is not a dependency). Together this says that any accuracy difference between the two at equal budget is
seed noise, not a difference of model (the parity benchmark measures it: docs/benchmarks.md).
"""

from __future__ import annotations

import pytest
import torch
from atomzoo.backbones import SchNet

pyg_schnet = pytest.importorskip("torch_geometric.nn.models.schnet")


@pytest.fixture(scope="module")
def qm9_batch(qm9):
    """32 real QM9 molecules of the validation split."""
    from torch_geometric.data import Batch

    val = qm9.dataset("val")
    return Batch.from_data_list([val[i] for i in range(32)])


def pyg_to_ours(state: dict[str, torch.Tensor], num_interactions: int) -> dict[str, torch.Tensor]:
    names = {"mlp.0": "conv.filter_net.0", "mlp.2": "conv.filter_net.2", "conv.lin1": "conv.in_proj",
             "conv.lin2": "conv.out_proj", "lin": "out"}
    out = {}
    for i in range(num_interactions):
        for theirs, ours in names.items():
            for kind in ("weight", "bias"):
                key = f"interactions.{i}.{theirs}.{kind}"
                if key in state:
                    out[f"interactions.{i}.{ours}.{kind}"] = state[key]
    return out


def test_schnet_initialises_every_tensor_as_pyg_does():
    """Same distribution per tensor: Xavier-uniform weights (std sqrt(2 / (fan_in + fan_out))), zero biases,
    N(0, 1) element embedding."""
    torch.manual_seed(1)
    ref = pyg_schnet.SchNet(hidden_channels=128, num_filters=128, num_interactions=6, num_gaussians=50, cutoff=10.0)
    ours = SchNet(width=128, num_filters=128, num_interactions=6, num_rbf=50, cutoff=10.0)
    theirs = pyg_to_ours(ref.state_dict(), 6)
    mine = dict(ours.named_parameters())
    assert set(theirs) == {k for k in mine if k.startswith("interactions.")}
    for key, tensor in theirs.items():
        p = mine[key].detach()
        assert p.shape == tensor.shape, key
        if key.endswith("bias"):
            assert torch.count_nonzero(p) == 0 and torch.count_nonzero(tensor) == 0, key
        else:
            expected = (2.0 / (p.shape[0] + p.shape[1])) ** 0.5
            assert abs(p.std().item() - expected) < 0.06 * expected, key
            assert abs(tensor.std().item() - expected) < 0.06 * expected, key
    assert abs(ours.embedding.weight.std().item() - 1.0) < 0.05
    assert abs(ref.embedding.weight[1:].std().item() - 1.0) < 0.05


def test_painn_equals_schnetpack_painn_with_the_same_weights(qm9_batch):
    """schnetpack 2.x PaiNN (the parity benchmark's reference; not a dependency: ``pip install --no-deps
    schnetpack==2.1.1``) with its weights mapped onto ours gives the same scalar features and the same
    vector features up to the global sign of schnetpack's edge-vector convention (``r_ij`` from the
    receiving atom to the neighbour), which no invariant output can see."""
    import importlib.util
    import sys
    import types

    spec = importlib.util.find_spec("schnetpack")
    if spec is None:
        pytest.skip("schnetpack is not installed (pip install --no-deps schnetpack==2.1.1)")
    if "schnetpack" not in sys.modules:  # its __init__ imports its training stack; the model code needs none of it
        stub = types.ModuleType("schnetpack")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["schnetpack"] = stub
    import schnetpack.nn as spk_nn
    import schnetpack.representation.painn as spk_painn
    from atomzoo.backbones import PaiNN

    width, num, num_rbf, cutoff = 16, 3, 20, 5.0
    torch.manual_seed(0)
    ref = spk_painn.PaiNN(n_atom_basis=width, n_interactions=num, cutoff_fn=spk_nn.cutoff.CosineCutoff(cutoff),
                          radial_basis=spk_nn.radial.BesselRBF(n_rbf=num_rbf, cutoff=cutoff))
    ours = PaiNN(width=width, num_interactions=num, num_rbf=num_rbf, cutoff=cutoff)
    state = {"embedding.weight": torch.cat([ref.embedding.weight.detach(), ours.embedding.weight[100:].detach()])}
    filters = ref.filter_net.weight.detach().split(3 * width, dim=0)
    filter_bias = ref.filter_net.bias.detach().split(3 * width, dim=0)
    def chunks(t, order):  # the three F-sized output pieces, in our order
        parts = t.split(width, dim=0)
        return torch.cat([parts[k] for k in order])

    # message pieces: schnetpack (scalar, edge-direction gate, neighbour-vector gate), ours (scalar,
    # vector gate, direction gate); update pieces: schnetpack (a_ss, a_vv, a_sv), ours (a_vv, a_sv, a_ss)
    msg, upd = (0, 2, 1), (1, 2, 0)
    for i in range(num):
        inter, mix = ref.interactions[i].interatomic_context_net, ref.mixing[i].intraatomic_context_net
        p = f"interactions.{i}."
        state |= {p + "message.phi.0.weight": inter[0].weight, p + "message.phi.0.bias": inter[0].bias,
                  p + "message.phi.2.weight": chunks(inter[1].weight, msg),
                  p + "message.phi.2.bias": chunks(inter[1].bias, msg),
                  p + "message.filter.weight": chunks(filters[i], msg),
                  p + "message.filter.bias": chunks(filter_bias[i], msg),
                  p + "update.mlp.0.weight": mix[0].weight, p + "update.mlp.0.bias": mix[0].bias,
                  p + "update.mlp.2.weight": chunks(mix[1].weight, upd), p + "update.mlp.2.bias": chunks(mix[1].bias, upd),
                  p + "update.V.weight": ref.mixing[i].mu_channel_mix.weight[:width],
                  p + "update.U.weight": ref.mixing[i].mu_channel_mix.weight[width:]}
    missing, unexpected = ours.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    assert not unexpected and set(missing) <= {"mask_embedding", "rbf.frequencies"}
    graph = ours.graph(qm9_batch)
    src, dst = graph.edge_index
    theirs = ref({"_atomic_numbers": qm9_batch.z, "_Rij": graph.vec, "_idx_i": dst, "_idx_j": src})
    out = ours(qm9_batch)
    assert out.scalars.abs().mean() > 0.1
    torch.testing.assert_close(out.scalars, theirs["scalar_representation"], rtol=1e-4, atol=1e-5)
    vectors = theirs["vector_representation"]
    sign = 1.0 if torch.allclose(out.vectors, vectors, rtol=1e-4, atol=1e-5) else -1.0
    torch.testing.assert_close(out.vectors, sign * vectors, rtol=1e-4, atol=1e-5)
