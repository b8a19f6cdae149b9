"""Regenerate tests/data/scd_et/: a tiny SCD "CT" backbone written by the reference code itself, and its outputs
(issue 28, item 3b).

    git clone https://github.com/TyJPerez/SelfConditionedDenoisingAtoms /tmp/scd   # the reference code
    OMP_NUM_THREADS=1 python tests/data/generators/make_scd_fixture.py --reference /tmp/scd

The reference's own class ``models.ET_models.scet.ConditionalET`` -- the ``rep_model`` of their ``CET``
(``models/ET_models/scd_model.py``), the backbone of the published ``Ty-Perez/ct-scd-pcq`` /
``ct-scd-amp`` checkpoints -- is imported from that clone and run on CPU, built with ``CET``'s argument
mapping (``hidden_channels=emb_dim``, ``attn_activation=activation``) and the settings of
``configs/model_configs/scd.yaml`` at a small width. ``CET`` itself is not imported: its module imports
``priors.py``, which imports ``wandb`` (not needed for the network). ``scet.py`` needs only torch,
torch-geometric and numpy; no compiled extension: the graph is handed over precomputed, as their
``graph_batch`` argument allows.
Every parameter is drawn at random (seeded) so that gates, DyT and post-norm weights are not at their
initial values. Written:

* ``scd_ct_tiny.ckpt``: ``torch.save`` of ``{"hyper_parameters": <CET's arguments>, "state_dict":
  {"model.rep_model.<key>": ...}}``, the layout of their Lightning trainer's checkpoints (``LNNP.model`` is
  the CET, ``CET.rep_model`` the ConditionalET);
* ``reference.npz``: the reference ``ConditionalET`` outputs ``x`` ``[N, F]`` and ``vec`` ``[N, 3, F]``
  in float64, with the default condition (``cond=None``: the mask token) on four molecules, and with
  the graph (all pairs within the cutoff plus self loops, ``edge_index`` source-first) it was given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "scd_et"
HPARAMS = dict(emb_dim=32, num_layers=2, num_heads=4, num_rbf=16, rbf_type="expnorm", trainable_rbf=False,
               neighbor_embedding=True, max_num_neighbors=32, distance_influence="both", cutoff_lower=0.0,
               cutoff_upper=5.0, max_z=118, layernorm_on_vec=False, vector_cutoff=True, p_droppath=0.1,
               p_dropcond=0.2, inv_post_norm=True, vec_post_norm=False, vec_prenorm=True, activation="silu")  # fmt: skip


def molecules():
    from ase.build import molecule

    mols = [molecule(name) for name in ("CH3CH2OH", "H2O", "HCN", "CH3CONH2")]
    rng = np.random.default_rng(0)
    for atoms in mols:
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
    return mols


def graph(pos: torch.Tensor, batch: torch.Tensor, cutoff: float):
    """All ordered pairs (source, target) of one molecule within ``cutoff``, self loops included."""
    src, dst = torch.meshgrid(torch.arange(len(pos)), torch.arange(len(pos)), indexing="ij")
    src, dst = src.reshape(-1), dst.reshape(-1)
    vec = pos[src] - pos[dst]
    dist = vec.norm(dim=-1)
    keep = (batch[src] == batch[dst]) & (dist < cutoff)
    return torch.stack([src[keep], dst[keep]]), dist[keep], vec[keep]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", required=True, help="clone of TyJPerez/SelfConditionedDenoisingAtoms")
    args = parser.parse_args()
    sys.path.insert(0, args.reference)
    from models.ET_models.scet import ConditionalET
    from torch_geometric.data import Data

    torch.manual_seed(0)
    h = HPARAMS
    model = ConditionalET(  # CET.__init__'s call (scd_model.py)
        hidden_channels=h["emb_dim"], num_layers=h["num_layers"], num_rbf=h["num_rbf"], rbf_type=h["rbf_type"],
        trainable_rbf=h["trainable_rbf"], activation=h["activation"], attn_activation=h["activation"],
        neighbor_embedding=h["neighbor_embedding"], num_heads=h["num_heads"], distance_influence=h["distance_influence"],
        cutoff_lower=h["cutoff_lower"], cutoff_upper=h["cutoff_upper"], max_z=h["max_z"],
        max_num_neighbors=h["max_num_neighbors"], vector_cutoff=h["vector_cutoff"], layernorm_on_vec=h["layernorm_on_vec"],
        p_droppath=h["p_droppath"], p_dropcond=h["p_dropcond"], inv_post_norm=h["inv_post_norm"],
        vec_post_norm=h["vec_post_norm"], vec_prenorm=h["vec_prenorm"],
    )  # fmt: skip
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.2 * torch.randn_like(p))
    model.eval()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": dict(HPARAMS, model="CET"),
                "state_dict": {f"model.rep_model.{k}": v for k, v in model.state_dict().items()}}, OUT / "scd_ct_tiny.ckpt")

    rep = model.double()
    mols = molecules()
    z = torch.tensor(np.concatenate([m.numbers for m in mols]))
    pos = torch.tensor(np.concatenate([m.positions for m in mols]), dtype=torch.float64)
    batch = torch.cat([torch.full((len(m),), k) for k, m in enumerate(mols)])
    edge_index, dist, vec = graph(pos, batch, HPARAMS["cutoff_upper"])
    given = Data(edge_index=edge_index, edge_distance=dist, edge_distance_vec=vec.clone())
    with torch.no_grad():
        x, v, *_ = rep(z, pos, batch, graph_batch=given)
    np.savez(OUT / "reference.npz", z=z.numpy(), pos=pos.numpy(), batch=batch.numpy(), x=x.numpy(), vec=v.numpy(),
             edge_index=edge_index.numpy())  # fmt: skip
    print(f"wrote {OUT / 'scd_ct_tiny.ckpt'} and {OUT / 'reference.npz'}: x {tuple(x.shape)}, vec {tuple(v.shape)}")


if __name__ == "__main__":
    main()
