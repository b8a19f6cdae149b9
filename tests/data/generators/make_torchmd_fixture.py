"""Write a small TorchMD-NET 3.1 equivariant-transformer checkpoint and its outputs on real QM9 molecules.

The zoo's TorchMD-NET weight loader (``atomzoo.backbones.et_torchmd.load_torchmd_et``) is tested against
these files in every test run, also where torchmd-net is not installed (it is not a dependency: its
``torchmd-net-cpu`` wheel pins another torch). Needs torchmd-net importable, e.g.
``pip install --no-deps --target /tmp/tmdnet torchmd-net==3.1.0 warp-lang`` and ``PYTHONPATH=/tmp/tmdnet``.

Writes, under ``--out``:

- ``et_32x2.ckpt``: ``{"hyper_parameters": <TorchMD-NET args>, "state_dict": {"model.<key>": tensor}}``,
  the layout of a TorchMD-NET training checkpoint (its ``LNNP`` holds the network as ``model``), float64,
  weights perturbed from the initialisation so that every tensor matters;
- ``outputs.npz``: the representation's per-atom scalars ``x`` [N, 32] and vectors ``vec`` [N, 3, 32]
  for QM9 molecules 0, 20000, ..., 100000 of qm9pack's CSVs (float64).

    PYTHONPATH=/tmp/tmdnet python tests/data/generators/make_torchmd_fixture.py --out tests/data/torchmd_et
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
from backbone_speed import read_qm9  # noqa: E402  -- the speed benchmark's QM9 reader: the same molecules

HPARAMS = dict(model="equivariant-transformer", embedding_dimension=32, num_layers=2, num_rbf=16,
               rbf_type="expnorm", trainable_rbf=True, activation="silu", attn_activation="silu",
               neighbor_embedding=True, num_heads=4, distance_influence="both", cutoff_lower=0.0,
               cutoff_upper=5.0, max_z=100, max_num_neighbors=64, vector_cutoff=False, reduce_op="add",
               output_model="Scalar", prior_model=None, derivative=False, atom_filter=-1, precision=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="tests/data/torchmd_et")
    args = parser.parse_args()
    from torchmdnet.models.model import create_model

    torch.manual_seed(0)
    model = create_model(dict(HPARAMS))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    mols = read_qm9(6, 20000)  # QM9 molecules 0, 20000, ..., 100000 (benchmarks/backbone_speed.py)
    z = torch.tensor([a for zs, _ in mols for a in zs])
    pos = torch.tensor([p for _, ps in mols for p in ps], dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(len(mols)), torch.tensor([len(zs) for zs, _ in mols]))
    with torch.no_grad():
        x, vec, *_ = model.representation_model(z, pos, batch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": dict(HPARAMS),
                "state_dict": {f"model.{k}": v.clone() for k, v in model.state_dict().items()}}, out / "et_32x2.ckpt")
    np.savez(out / "outputs.npz", x=x.numpy(), vec=vec.numpy(), z=z.numpy(), pos=pos.numpy(), batch=batch.numpy())
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters())} parameters, {z.numel()} atoms")


if __name__ == "__main__":
    main()
