"""Write schnetpack 2.1.1's PaiNN outputs on real molecules, with its weights in atomzoo's layout.

``atomzoo.backbones.PaiNN`` is tested against this file in every test run
(``tests/test_painn_reference.py``), also where schnetpack is not installed (it is a reference, not a
dependency). Needs schnetpack importable, e.g. ``pip install --no-deps --target /tmp/spk schnetpack==2.1.1``
(its model code needs only torch; its package ``__init__`` imports its training stack, which is
bypassed here) and ``PYTHONPATH=/tmp/spk``.

Writes ``--out`` (default ``tests/data/schnetpack_painn/painn_16x3.npz``), float64:

- ``state/<key>``: schnetpack's PaiNN weights (``n_atom_basis=16``, 3 interactions, 20 Bessel
  functions, cosine cutoff 5 A, seed 0, then perturbed so that every tensor matters) mapped onto
  ``atomzoo.backbones.PaiNN(width=16, num_interactions=3, num_rbf=20, cutoff=5.0)`` by
  :func:`map_weights`;
- ``z`` [N], ``pos`` [N, 3] (Angstrom), ``batch`` [N]: frames 0, 100, 200, 300 and 400 of the committed
  rMD17-format ethanol fixture (``tests/data/md17_fixture``);
- ``scalars`` [N, 16], ``vectors`` [N, 3, 16]: schnetpack's ``scalar_representation`` and
  ``vector_representation`` on atomzoo's graph of those molecules (the vectors' global sign is
  schnetpack's edge-vector convention; no invariant output can see it).

    PYTHONPATH=/tmp/spk python tests/data/generators/make_painn_reference.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
WIDTH, NUM_INTERACTIONS, NUM_RBF, CUTOFF = 16, 3, 20, 5.0
FRAMES = (0, 100, 200, 300, 400)


def import_schnetpack_painn():
    """``(schnetpack.nn, schnetpack.representation.painn)`` without schnetpack's training stack."""
    spec = importlib.util.find_spec("schnetpack")
    if spec is None:
        raise ImportError("schnetpack is not installed (pip install --no-deps schnetpack==2.1.1)")
    if "schnetpack" not in sys.modules:  # its __init__ imports its training stack; the model code needs none of it
        stub = types.ModuleType("schnetpack")
        stub.__path__ = list(spec.submodule_search_locations)
        sys.modules["schnetpack"] = stub
    import schnetpack.nn as spk_nn
    import schnetpack.representation.painn as spk_painn

    return spk_nn, spk_painn


def schnetpack_painn(width: int = WIDTH, num: int = NUM_INTERACTIONS, num_rbf: int = NUM_RBF, cutoff: float = CUTOFF):
    """schnetpack's PaiNN with a Bessel basis and a cosine cutoff (the parity benchmark's reference)."""
    spk_nn, spk_painn = import_schnetpack_painn()
    return spk_painn.PaiNN(n_atom_basis=width, n_interactions=num, cutoff_fn=spk_nn.cutoff.CosineCutoff(cutoff),
                           radial_basis=spk_nn.radial.BesselRBF(n_rbf=num_rbf, cutoff=cutoff))


def map_weights(ref, ours) -> dict[str, torch.Tensor]:
    """schnetpack PaiNN ``ref``'s tensors under the keys of atomzoo PaiNN ``ours`` (same width, depth).

    Message pieces: schnetpack (scalar, edge-direction gate, neighbour-vector gate), ours (scalar,
    vector gate, direction gate); update pieces: schnetpack (a_ss, a_vv, a_sv), ours (a_vv, a_sv,
    a_ss). schnetpack's embedding has 100 rows, ours one more (the mask token row keeps ours)."""
    width = ref.n_atom_basis
    state = {"embedding.weight": torch.cat([ref.embedding.weight.detach(), ours.embedding.weight[100:].detach()])}
    filters = ref.filter_net.weight.detach().split(3 * width, dim=0)
    filter_bias = ref.filter_net.bias.detach().split(3 * width, dim=0)

    def chunks(t, order):  # the three F-sized output pieces, in our order
        parts = t.split(width, dim=0)
        return torch.cat([parts[k] for k in order])

    msg, upd = (0, 2, 1), (1, 2, 0)
    for i in range(len(ref.interactions)):
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
                  p + "update.U.weight": ref.mixing[i].mu_channel_mix.weight[width:]}  # fmt: skip
    return {k: v.detach() for k, v in state.items()}


def schnetpack_outputs(ref, ours, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """schnetpack's ``(scalar_representation [N, F], vector_representation [N, 3, F])`` on ours' graph of ``batch``."""
    graph = ours.graph(batch)
    src, dst = graph.edge_index
    out = ref({"_atomic_numbers": batch.z, "_Rij": graph.vec, "_idx_i": dst, "_idx_j": src})
    return out["scalar_representation"].detach(), out["vector_representation"].detach()


def ethanol_batch():
    """Frames :data:`FRAMES` of the committed ethanol fixture as a float64 PyG batch."""
    from torch_geometric.data import Batch, Data

    data = np.load(ROOT / "tests" / "data" / "md17_fixture" / "rmd17" / "npz_data" / "rmd17_ethanol.npz")
    z = torch.as_tensor(data["nuclear_charges"], dtype=torch.long)
    return Batch.from_data_list([Data(z=z, pos=torch.as_tensor(data["coords"][k], dtype=torch.float64))
                                 for k in FRAMES])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "tests" / "data" / "schnetpack_painn" / "painn_16x3.npz"))
    args = parser.parse_args()
    from atomzoo.backbones import PaiNN

    torch.manual_seed(0)
    ref = schnetpack_painn().double()
    with torch.no_grad():  # perturb the initialisation (zero biases etc.) so that every tensor matters
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = PaiNN(width=WIDTH, num_interactions=NUM_INTERACTIONS, num_rbf=NUM_RBF, cutoff=CUTOFF).double()
    state = map_weights(ref, ours)
    batch = ethanol_batch()
    scalars, vectors = schnetpack_outputs(ref, ours, batch)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, z=batch.z.numpy(), pos=batch.pos.numpy(), batch=batch.batch.numpy(),
                        scalars=scalars.numpy(), vectors=vectors.numpy(),
                        **{f"state/{k}": v.numpy() for k, v in state.items()})  # fmt: skip
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
