"""Train atomzoo's ET and torchmd-net's TorchMD_ET side by side on QM9 at equal budget.

Both start from the *same* weights (torchmd-net initialises, :func:`load_torchmd_et` copies them into
ours), get the same readout (``Linear(F, F/2) - ssp - Linear(F/2, 1)``, mean over atoms, copied), the
same batches in the same order, Adam and an L1 loss on the standardised target. Their steps alternate
in one process so both see the same machine load; per-step process CPU time is recorded per model
(``--threads 1``: CPU time = compute time). Reports validation MAE (meV) of both after the budget.

If the two codes compute the same function and gradients, the two runs differ only by float32
rounding (summation order), which grows slowly over training.

    python tests/equivalence/et_lockstep_training.py --threads 1 --steps 300 --seeds 0,1
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn
from torch_geometric.utils import scatter

from atomzoo.backbones.et_torchmd import load_torchmd_et
from atomzoo.datamodules import QM9DataModule
from atomzoo.nn.radial import ShiftedSoftplus


def hparams(args) -> dict:
    return dict(model="equivariant-transformer", embedding_dimension=args.width, num_layers=args.layers,
                num_rbf=args.rbf, rbf_type="expnorm", trainable_rbf=False, activation="silu",
                attn_activation="silu", neighbor_embedding=True, num_heads=8, distance_influence="both",
                cutoff_lower=0.0, cutoff_upper=5.0, max_z=100, max_num_neighbors=32, vector_cutoff=False,
                reduce_op="add", output_model="Scalar", prior_model=None, derivative=False, atom_filter=-1,
                precision=32)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--rbf", type=int, default=32)
    parser.add_argument("--target", default="homo")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    from torchmdnet.models.model import create_model

    torch.set_num_threads(args.threads)
    dm = QM9DataModule(targets=[args.target], batch_size=args.batch_size, eval_batch_size=128,
                       train_size=args.train_size)
    dm.prepare_data()
    dm.setup("fit")
    val = []
    for batch in dm.val_dataloader():
        val.append(batch)
        if sum(b.num_graphs for b in val) >= args.val_size:
            break
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        torch.manual_seed(seed)
        reference = create_model(hparams(args)).representation_model
        ours = load_torchmd_et(reference)
        head_ref = nn.Sequential(nn.Linear(args.width, args.width // 2), ShiftedSoftplus(), nn.Linear(args.width // 2, 1))
        head_ours = nn.Sequential(nn.Linear(args.width, args.width // 2), ShiftedSoftplus(), nn.Linear(args.width // 2, 1))
        head_ours.load_state_dict(head_ref.state_dict())
        train = []
        generator = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(dm.train_dataloader().dataset, batch_size=args.batch_size, shuffle=True,
                                             generator=generator, collate_fn=dm.train_dataloader().collate_fn)
        while len(train) < args.steps:
            for batch in loader:
                train.append(batch)
                if len(train) == args.steps:
                    break
        ys = torch.cat([b.y[:, 0] for b in train[: min(50, len(train))]]).float()
        mean, std = ys.mean(), ys.std()

        def forward(name, rep, head, batch):
            x = rep(batch.z, batch.pos.float(), batch.batch)[0] if name == "torchmd" else rep(batch).scalars
            return scatter(head(x).squeeze(-1), batch.batch, dim=0, dim_size=batch.num_graphs, reduce="mean")

        runs = {"torchmd": (reference, head_ref), "atomzoo": (ours, head_ours)}
        optims = {k: torch.optim.Adam([*m.parameters(), *h.parameters()], lr=args.lr) for k, (m, h) in runs.items()}
        cpu = {k: 0.0 for k in runs}
        losses = {k: [] for k in runs}
        for step, batch in enumerate(train):
            batch.pos = batch.pos.float()
            for name, (rep, head) in runs.items():
                t0 = time.process_time()
                pred = forward(name, rep, head, batch)
                loss = (pred - (batch.y[:, 0].float() - mean) / std).abs().mean()
                optims[name].zero_grad()
                loss.backward()
                optims[name].step()
                cpu[name] += time.process_time() - t0
                losses[name].append(loss.item())
        row = {"seed": seed, "steps": args.steps, "batch_size": args.batch_size, "width": args.width,
               "layers": args.layers, "num_rbf": args.rbf, "target": args.target}
        for name, (rep, head) in runs.items():
            rep.eval()
            err, count = 0.0, 0
            with torch.no_grad():
                for batch in val:
                    batch.pos = batch.pos.float()
                    pred = forward(name, rep, head, batch) * std + mean
                    err += (pred - batch.y[:, 0].float()).abs().sum().item()
                    count += batch.num_graphs
            row[f"{name}_val_mae_meV"] = 1000.0 * err / count
            row[f"{name}_cpu_s_per_step"] = cpu[name] / args.steps
            row[f"{name}_molecules_per_cpu_s"] = args.batch_size * args.steps / cpu[name]
            row[f"{name}_final_train_loss_avg20"] = sum(losses[name][-20:]) / len(losses[name][-20:])
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
