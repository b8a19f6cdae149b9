"""Write ``tests/data/painn_forces_reference/painn_16x3_forces.npz``: energy, forces, cell gradient and
parameter gradients of the PaiNN implementation as committed at ``837d523`` (before the message blocks
were rewritten to work per atom pair and in chunks, issue 29 item 5), frozen so that
``tests/test_painn_forces_reference.py`` checks every later implementation against it.

The old ``backbones/painn.py`` is read from git (``git show 837d523:backbones/painn.py``) and imported
as a module of ``atomzoo.backbones``, so this script reproduces the file from any later checkout::

    python tests/data/generators/make_painn_forces_reference.py

Three cases, float64, ``PaiNN(width=16, num_interactions=3, num_rbf=20, cutoff=5.0)`` (schnetpack
parity fixture's molecules, ``tests/data/schnetpack_painn/painn_16x3.npz``):

* ``molecules``: five QM9 molecules;
* ``conditioned``: the same with ``condition_dim=2`` and a per-molecule condition (adaLN path);
* ``periodic``: a rattled, sheared 4-atom cell of 3.1-3.4 A (smaller than twice the cutoff: every
  atom neighbours its own periodic images) plus one molecule in the same batch; the cell requires
  grad, so ``dE/dcell`` (the stress path) is stored too.

Scalar target per case: ``E = sum_atoms s @ a + sum_atoms |v|^2 @ b`` (``a``, ``b`` fixed random
``[16]`` of scale 0.01), so both the scalar and the vector features reach the loss ``E^2 + sum(F^2)``, with
``F = -dE/dpos`` by autograd (``create_graph=True``, the double backward of force training).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[3]
REFERENCE_COMMIT = "837d523"
OUT = REPO / "tests" / "data" / "painn_forces_reference" / "painn_16x3_forces.npz"
PARITY = REPO / "tests" / "data" / "schnetpack_painn" / "painn_16x3.npz"


def old_painn():
    """The ``PaiNN`` class of ``backbones/painn.py`` at :data:`REFERENCE_COMMIT`."""
    import atomzoo.backbones  # noqa: F401  (the package the old module's relative imports resolve in)

    source = subprocess.run(["git", "-C", str(REPO), "show", f"{REFERENCE_COMMIT}:backbones/painn.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "painn_reference.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("atomzoo.backbones._painn_reference", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.PaiNN


def cases() -> dict:
    """``{name: (z, pos, batch, cell or None, pbc or None, condition_dim)}`` as numpy arrays."""
    data = np.load(PARITY)
    z, pos, batch = data["z"], data["pos"], data["batch"]
    rng = np.random.default_rng(7)
    lattice = np.diag([3.1, 3.3, 3.4]) + 0.2 * rng.normal(size=(3, 3))
    fractional = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    crystal = fractional @ lattice + 0.1 * rng.normal(size=(4, 3))
    molecule = batch == 0
    periodic = (np.concatenate([[29, 8, 8, 29], z[molecule]]), np.concatenate([crystal, pos[molecule]]),
                np.array([0] * 4 + [1] * int(molecule.sum())),
                np.stack([lattice, np.zeros((3, 3))]), np.array([[True, True, True], [False, False, False]]))
    return {
        "molecules": (z, pos, batch, None, None, 0),
        "conditioned": (z, pos, batch, None, None, 2),
        "periodic": (*periodic, 0),
    }


def evaluate(model, z, pos, batch, cell, pbc, condition, a, b) -> dict:
    """Energy, forces, ``dE/dcell`` (periodic) and parameter gradients of ``E^2 + sum(F^2)``."""
    from torch_geometric.data import Batch, Data

    graphs = []
    for g in range(int(batch.max()) + 1):
        item = Data(z=torch.as_tensor(z[batch == g]), pos=torch.as_tensor(pos[batch == g]))
        if cell is not None:
            item.cell = torch.as_tensor(cell[g]).unsqueeze(0)
            item.pbc = torch.as_tensor(pbc[g]).unsqueeze(0)
        graphs.append(item)
    data = Batch.from_data_list(graphs)
    data.pos = data.pos.clone().requires_grad_(True)
    inputs = [data.pos]
    if cell is not None:
        data.cell = data.cell.clone().requires_grad_(True)
        inputs.append(data.cell)
    model.zero_grad(set_to_none=True)
    out = model(data, condition)
    energy = (out.scalars @ a).sum() + ((out.vectors**2).sum(1) @ b).sum()
    grads = torch.autograd.grad(energy, inputs, create_graph=True)
    forces = -grads[0]
    loss = energy.square() + forces.square().sum()
    loss.backward()
    result = {"energy": energy.detach(), "forces": forces.detach()}
    if cell is not None:
        result["cell_grad"] = grads[1].detach()
    for name, p in model.named_parameters():
        if p.grad is not None:
            result[f"grad/{name}"] = p.grad.detach()
    return result


def main() -> None:
    PaiNN = old_painn()
    torch.manual_seed(0)
    # scaled so that energies, forces and parameter gradients are O(1)-O(100): 1e-10 is then ~1e-12 relative
    a, b = 0.01 * torch.randn(16, dtype=torch.float64), 0.01 * torch.randn(16, dtype=torch.float64)
    arrays = {"a": a.numpy(), "b": b.numpy()}
    for name, (z, pos, batch, cell, pbc, condition_dim) in cases().items():
        torch.manual_seed(1)
        model = PaiNN(width=16, num_interactions=3, num_rbf=20, cutoff=5.0, condition_dim=condition_dim).double()
        for p in model.parameters():  # zero-initialised biases and adaLN layers would hide their paths
            with torch.no_grad():
                p.add_(0.1 * torch.randn_like(p))
        condition = None
        if condition_dim:
            condition = torch.randn(int(batch.max()) + 1, condition_dim, dtype=torch.float64)
            arrays[f"{name}/condition"] = condition.numpy()
        for key, value in model.state_dict().items():
            arrays[f"{name}/state/{key}"] = value.numpy()
        for key, value in {"z": z, "pos": pos, "batch": batch, "cell": cell, "pbc": pbc}.items():
            if value is not None:
                arrays[f"{name}/{key}"] = np.asarray(value)
        for key, value in evaluate(model, z, pos, batch, cell, pbc, condition, a, b).items():
            arrays[f"{name}/{key}"] = value.numpy()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
