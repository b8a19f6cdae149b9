"""PaiNN computes schnetpack's PaiNN, in every run: committed schnetpack 2.1.1 outputs and weights
(``tests/data/schnetpack_painn``, written by ``tests/data/generators/make_painn_reference.py``), so the
equivalence is checked where schnetpack is not installed (CI included), as ET's is with its committed
TorchMD-NET checkpoint. The live comparison with schnetpack itself is
``test_reference_equivalence.py::test_painn_equals_schnetpack_painn_with_the_same_weights``."""

from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from atomzoo.backbones import PaiNN

FIXTURE = Path(__file__).resolve().parent / "data" / "schnetpack_painn" / "painn_16x3.npz"


def test_painn_equals_committed_schnetpack_outputs():
    data = np.load(FIXTURE)
    state = {k[len("state/"):]: torch.from_numpy(data[k]) for k in data.files if k.startswith("state/")}
    ours = PaiNN(width=16, num_interactions=3, num_rbf=20, cutoff=5.0).double().eval()
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"mask_embedding", "rbf.frequencies"}
    z, pos, index = (torch.from_numpy(data[k]) for k in ("z", "pos", "batch"))
    batch = Batch.from_data_list([Data(z=z[index == g], pos=pos[index == g]) for g in range(int(index.max()) + 1)])
    with torch.no_grad():
        out = ours(batch)
    scalars, vectors = torch.from_numpy(data["scalars"]), torch.from_numpy(data["vectors"])
    assert scalars.abs().mean() > 0.1 and vectors.abs().mean() > 1e-3
    torch.testing.assert_close(out.scalars, scalars, rtol=0, atol=1e-10)
    # schnetpack's edge vectors point the other way: its vector features are ours up to one global sign
    sign = 1.0 if torch.allclose(out.vectors, vectors, rtol=0, atol=1e-10) else -1.0
    torch.testing.assert_close(out.vectors, sign * vectors, rtol=0, atol=1e-10)
