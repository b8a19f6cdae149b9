"""PaiNN trained with forces computes what it computed before its message blocks were rewritten per atom
pair and in chunks (issue 29, item 5): energy, forces ``-dE/dpos``, ``dE/dcell`` and the parameter
gradients of ``E^2 + sum(F^2)`` (the double backward of force training) equal the frozen outputs of the
implementation at commit 837d523 (``tests/data/painn_forces_reference``, written by
``tests/data/generators/make_painn_forces_reference.py``) to 1e-10 in float64, for molecules, a
conditioned model (adaLN) and a periodic cell whose atoms neighbour their own images, each with the
CPU chunking off (one chunk, as on CUDA and under torch.compile) and with chunks of a few pairs."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import atomzoo.backbones.painn as painn_module
from atomzoo.backbones import PaiNN

sys.path.insert(0, str(Path(__file__).resolve().parent / "data" / "generators"))
from make_painn_forces_reference import OUT as FIXTURE, evaluate  # noqa: E402

CASES = ["molecules", "conditioned", "periodic"]


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE)


def load(reference, case: str):
    prefix = f"{case}/"
    arrays = {k[len(prefix):]: reference[k] for k in reference.files if k.startswith(prefix)}
    state = {k[len("state/"):]: torch.from_numpy(v) for k, v in arrays.items() if k.startswith("state/")}
    condition_dim = 2 if "condition" in arrays else 0
    model = PaiNN(width=16, num_interactions=3, num_rbf=20, cutoff=5.0, condition_dim=condition_dim).double()
    model.load_state_dict(state)  # strict: the parameter names are unchanged
    condition = torch.from_numpy(arrays["condition"]) if condition_dim else None
    inputs = [arrays["z"], arrays["pos"], arrays["batch"], arrays.get("cell"), arrays.get("pbc")]
    return model, inputs, condition, arrays


@pytest.mark.parametrize("chunk_bytes", [1 << 40, 6 * 16 * 8 * 3], ids=["one_chunk", "chunks_of_3_pairs"])
@pytest.mark.parametrize("case", CASES)
def test_painn_forces_and_gradients_equal_the_frozen_reference(reference, case, chunk_bytes, monkeypatch):
    monkeypatch.setattr(painn_module, "CPU_CHUNK_BYTES", chunk_bytes)
    model, inputs, condition, expected = load(reference, case)
    got = evaluate(model, *inputs, condition, torch.from_numpy(reference["a"]), torch.from_numpy(reference["b"]))
    keys = {k for k in expected if k in ("energy", "forces", "cell_grad") or k.startswith("grad/")}
    assert keys == set(got), keys ^ set(got)  # same parameters receive gradients
    assert (case == "periodic") == ("cell_grad" in keys)
    assert np.abs(expected["forces"]).max() > 1e-2  # a real signal, not zeros
    for key in sorted(keys):
        torch.testing.assert_close(got[key], torch.from_numpy(expected[key]), rtol=0, atol=1e-10, msg=key)


def test_chunks_cover_every_pair_once_in_both_directions(reference):
    """The chunking the equality test runs at 3 pairs per chunk really splits the graph, and the chunks
    hold every directed edge of the graph exactly once, with the reverse edge's unit vector negated."""
    model, (z, pos, batch, cell, pbc), _, _ = load(reference, "periodic")
    from torch_geometric.data import Batch, Data

    graphs = []
    for g in range(int(batch.max()) + 1):
        item = Data(z=torch.as_tensor(z[batch == g]), pos=torch.as_tensor(pos[batch == g]),
                    cell=torch.as_tensor(cell[g]).unsqueeze(0), pbc=torch.as_tensor(pbc[g]).unsqueeze(0))
        graphs.append(item)
    data = Batch.from_data_list(graphs)
    graph = model.graph(data)
    assert (graph.edge_index[0] == graph.edge_index[1]).any()  # the cell is small enough for self-images
    pairs = painn_module.PairGeometry.of(graph, model.rbf, model.cutoff)
    chunks = pairs.chunks(3)
    assert len(chunks) == -(-graph.edge_index.size(1) // 6) > 1
    sender = torch.cat([c.sender for c in chunks])
    receiver = torch.cat([c.receiver for c in chunks])
    unit = torch.cat([c.unit.reshape(-1, 3) for c in chunks])
    for c in chunks:
        torch.testing.assert_close(c.unit[1], -c.unit[0], rtol=0, atol=0)
    # every directed edge (with its unit vector) once: sort both by (receiver, sender, unit)
    ours = torch.cat([receiver[:, None].double(), sender[:, None].double(), unit], dim=1)
    full = torch.cat([graph.edge_index[1][:, None].double(), graph.edge_index[0][:, None].double(), graph.unit], dim=1)
    key = lambda t: t[np.lexsort(t.detach().numpy().T[::-1])]  # noqa: E731
    torch.testing.assert_close(key(ours), key(full), rtol=0, atol=1e-14)
    assert pairs.chunks(None)[0].sender.numel() == graph.edge_index.size(1)


def test_painn_without_edges_gives_zero_vectors():
    """A lone atom (no neighbour): one empty chunk, zero messages, finite features."""
    from torch_geometric.data import Data, Batch

    model = PaiNN(width=8, num_interactions=2, num_rbf=4, cutoff=3.0).double()
    data = Batch.from_data_list([Data(z=torch.tensor([6]), pos=torch.zeros(1, 3, dtype=torch.float64))])
    out = model(data)
    assert out.vectors.shape == (1, 3, 8) and (out.vectors == 0).all() and torch.isfinite(out.scalars).all()
