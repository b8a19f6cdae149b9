"""Our backbones compute the same function as their reference implementations.

Given the same weights (the reference's state dict mapped onto ours), our SchNet's per-atom features
equal those of PyTorch Geometric's SchNet blocks (``torch_geometric.nn.models.schnet``, the reference
of the parity benchmark) on real QM9 molecules, and both initialise every tensor from the same
distribution. Together this says that any accuracy difference between the two at equal budget is
seed noise, not a difference of model (the parity benchmark measures it: docs/benchmarks.md).
"""

from __future__ import annotations

import pytest
import torch
from atomzoo.backbones import SchNet
from atomzoo.backbones.base import Backbone, BackboneOutput
from torch import nn

pyg_schnet = pytest.importorskip("torch_geometric.nn.models.schnet")


class PygSchNetBlocks(Backbone):
    """PyG's embedding, Gaussian smearing and interaction blocks on our graph (as the parity adapter)."""

    def __init__(self, width: int, num_filters: int, num_interactions: int, num_rbf: int, cutoff: float) -> None:
        super().__init__(width=width, cutoff=cutoff)
        self.embedding = nn.Embedding(100, width, padding_idx=0)
        self.distance_expansion = pyg_schnet.GaussianSmearing(0.0, cutoff, num_rbf)
        self.interactions = nn.ModuleList(
            pyg_schnet.InteractionBlock(width, num_rbf, num_filters, cutoff) for _ in range(num_interactions)
        )

    def forward(self, data, condition=None) -> BackboneOutput:
        graph = self.graph(data)
        edge_attr = self.distance_expansion(graph.length)
        h = self.embedding(data.z)
        for block in self.interactions:
            h = h + block(h, graph.edge_index, graph.length, edge_attr)
        return BackboneOutput(scalars=h, vectors=None, graph=graph)


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


def test_schnet_equals_pyg_schnet_blocks_with_the_same_weights(qm9_batch):
    torch.manual_seed(0)
    ref = PygSchNetBlocks(32, 24, 3, 25, 5.0)
    for block in ref.interactions:
        block.reset_parameters()  # PyG's own initialisation
    ours = SchNet(width=32, num_filters=24, num_interactions=3, num_rbf=25, cutoff=5.0)
    missing, unexpected = ours.load_state_dict(pyg_to_ours(ref.state_dict(), 3), strict=False)
    assert not unexpected
    assert set(missing) == {"embedding.weight", "rbf.centres"}  # loaded / compared below
    with torch.no_grad():
        ours.embedding.weight[:100] = ref.embedding.weight
    assert torch.equal(ours.rbf(torch.linspace(0, 5, 11)), ref.distance_expansion(torch.linspace(0, 5, 11)))
    a, b = ours(qm9_batch).scalars, ref(qm9_batch).scalars
    assert a.abs().mean() > 0.1
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a different weight anywhere changes the output: the comparison is not vacuous
    with torch.no_grad():
        ours.interactions[2].conv.filter_net[2].weight.mul_(1.01)
    assert not torch.allclose(ours(qm9_batch).scalars, b, rtol=1e-5, atol=1e-5)


def test_schnet_initialises_every_tensor_as_pyg_does():
    """Same distribution per tensor: Xavier-uniform weights (std sqrt(2 / (fan_in + fan_out))), zero biases,
    N(0, 1) element embedding."""
    torch.manual_seed(1)
    ref = PygSchNetBlocks(128, 128, 6, 50, 10.0)
    for block in ref.interactions:
        block.reset_parameters()
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
