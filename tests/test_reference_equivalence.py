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
    receiving atom to the neighbour), which no invariant output can see. Runs where schnetpack is
    installed; ``test_painn_reference.py`` checks committed schnetpack outputs in every run."""
    import importlib.util

    if importlib.util.find_spec("schnetpack") is None:
        pytest.skip("schnetpack is not installed (pip install --no-deps schnetpack==2.1.1); "
                    "test_painn_reference.py checks its committed outputs")
    from atomzoo.backbones import PaiNN

    generator = _painn_generator()
    width, num, num_rbf, cutoff = 16, 3, 20, 5.0
    torch.manual_seed(0)
    ref = generator.schnetpack_painn(width, num, num_rbf, cutoff)
    ours = PaiNN(width=width, num_interactions=num, num_rbf=num_rbf, cutoff=cutoff)
    missing, unexpected = ours.load_state_dict(generator.map_weights(ref, ours), strict=False)
    assert not unexpected and set(missing) <= {"mask_embedding", "rbf.frequencies"}
    scalars, vectors = generator.schnetpack_outputs(ref, ours, qm9_batch)
    out = ours(qm9_batch)
    assert out.scalars.abs().mean() > 0.1
    torch.testing.assert_close(out.scalars, scalars, rtol=1e-4, atol=1e-5)
    sign = 1.0 if torch.allclose(out.vectors, vectors, rtol=1e-4, atol=1e-5) else -1.0
    torch.testing.assert_close(out.vectors, sign * vectors, rtol=1e-4, atol=1e-5)


def _painn_generator():
    """``tests/data/generators/make_painn_reference.py`` as a module (the schnetpack import and weight map)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "data" / "generators" / "make_painn_reference.py"
    spec = importlib.util.spec_from_file_location("make_painn_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
