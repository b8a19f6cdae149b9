"""Closed-form linear probe of a pretraining run: the reference an SGD linear probe should approach.

Mean-pools the frozen backbone's per-atom scalars over each molecule (``[B, width]``), standardises
them on the training molecules and fits ridge regression (least squares with a small ridge) to one
QM9 target on the first ``--train-size`` training molecules; prints the test MAE on the whole test
split. ``--random-init`` probes the same backbone with random weights instead.

    python benchmarks/closed_form_probe.py runs/bench/qm9_objectives/cells/pretrain/painn/denoising/c0/run \
        --target homo --train-size 10000

Measured numbers are in docs/benchmarks.md (linear-probe section).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import numpy as np
import torch
import yaml
from torch_geometric.loader import DataLoader
from torch_geometric.utils import scatter

from atomzoo.datamodules import QM9DataModule
from atomzoo.objectives.export import load_into_backbone


def backbone_of(run: Path, random_init: bool) -> torch.nn.Module:
    """The backbone of a ``zoo fit`` run folder (its config.yaml), with the weights of last.ckpt."""
    config = run / "config.yaml"
    if not config.exists():
        raise FileNotFoundError(f"{config} does not exist: pass the run folder of a zoo fit (it holds config.yaml)")
    spec = yaml.safe_load(config.read_text())["model"]["init_args"]["backbone"]
    module, name = spec["class_path"].rsplit(".", 1)
    backbone = getattr(importlib.import_module(module), name)(**spec.get("init_args", {}))
    if not random_init:
        load_into_backbone(backbone, str(run / "checkpoints" / "last.ckpt"))
    return backbone.eval()


@torch.no_grad()
def features(backbone: torch.nn.Module, loader) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled per-atom scalars ``[B, width]`` and the target ``[B]`` of every molecule."""
    xs, ys = [], []
    for batch in loader:
        xs.append(scatter(backbone(batch).scalars, batch.batch, 0, reduce="mean"))
        ys.append(batch.y.reshape(-1))
    return torch.cat(xs).double().numpy(), torch.cat(ys).double().numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder of a pretraining zoo fit (config.yaml, checkpoints/)")
    parser.add_argument("--target", default="homo")
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--ridge", type=float, default=1e-4, help="ridge strength, relative to the number of molecules")
    parser.add_argument("--random-init", action="store_true", help="probe the same backbone with random weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    backbone = backbone_of(args.run, args.random_init)
    data = QM9DataModule(targets=[args.target], train_size=args.train_size, eval_batch_size=256)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    x_train, y_train = features(backbone, DataLoader(data.dataset("train"), batch_size=256))
    x_test, y_test = features(backbone, data.test_dataloader())
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    a, b = (x_train - mean) / std, (x_test - mean) / std
    gram = a.T @ a + args.ridge * len(a) * np.eye(a.shape[1])
    weights = np.linalg.solve(gram, a.T @ (y_train - y_train.mean()))
    mae = np.abs(b @ weights + y_train.mean() - y_test).mean()
    unit = data.target_info(args.target).unit
    scale, shown = (1000.0, "meV") if unit == "eV" else (1.0, unit)
    print(f"{args.run} ({'random init' if args.random_init else 'pretrained'}): closed-form linear probe, "
          f"{args.target}, n={args.train_size}: test MAE {scale * mae:.1f} {shown} on {len(y_test)} molecules")


if __name__ == "__main__":
    main()
