"""Closed-form linear probe of a pretraining run: the reference an SGD linear probe should approach.

Mean-pools the frozen backbone's per-atom scalars over each molecule (``[B, width]``), standardises
them on the training molecules and fits ridge regression (least squares with a small ridge) to one
QM9 target on the first ``train_size`` training molecules; reports the test MAE on the whole test
split. ``random_init`` probes the same backbone with random weights instead.

    zoo-bench probe runs/bench/qm9_objectives/cells/pretrain/painn/denoising/c0/run \
        --target homo --train-size 10000

Measured numbers are in docs/benchmarks.md (linear-probe section).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from torch_geometric.loader import DataLoader
from torch_geometric.utils import scatter

from atomzoo.datamodules import QM9DataModule
from atomzoo.model_files import load_into_backbone, resolve_class


def backbone_of(run: Path, random_init: bool) -> torch.nn.Module:
    """The backbone of a ``zoo fit`` run folder (its config.yaml), with its final weights (the newer of
    ``last.ckpt`` and ``last-step.ckpt``: see :func:`atomzoo.runner.execute.checkpoint_of`)."""
    config = run / "config.yaml"
    if not config.exists():
        raise FileNotFoundError(f"{config} does not exist: pass the run folder of a zoo fit (it holds config.yaml)")
    spec = yaml.safe_load(config.read_text())["model"]["init_args"]["backbone"]
    backbone = resolve_class(spec["class_path"])(**spec.get("init_args", {}))
    if not random_init:
        saved = sorted((run / "checkpoints").glob("last*.ckpt"),
                       key=lambda f: (f.stat().st_mtime, f.name == "last.ckpt"))
        load_into_backbone(backbone, str(saved[-1] if saved else run / "checkpoints" / "last.ckpt"))
    return backbone.eval()


@torch.no_grad()
def features(backbone: torch.nn.Module, loader) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pooled per-atom scalars ``[B, width]`` and the target ``[B]`` of every molecule."""
    xs, ys = [], []
    for batch in loader:
        xs.append(scatter(backbone(batch).scalars, batch.batch, 0, reduce="mean"))
        ys.append(batch.y.reshape(-1))
    return torch.cat(xs).double().numpy(), torch.cat(ys).double().numpy()


def closed_form_probe(run: Path, target: str = "homo", train_size: int = 10000, ridge: float = 1e-4,
                      random_init: bool = False, seed: int = 0) -> dict:
    """Test MAE of the ridge-regression probe of ``run``'s backbone on one QM9 target.

    Args:
        run: run folder of a ``zoo fit`` (``config.yaml``, ``checkpoints/last*.ckpt``).
        ridge: ridge strength relative to the number of training molecules.
        random_init: probe the same architecture with random weights (seeded by ``seed``).

    Returns:
        ``{"mae": float, "unit": str, "molecules": int}``: MAE in meV for eV targets, else the target's unit.

    Raises:
        FileNotFoundError: ``run`` holds no ``config.yaml``.
    """
    torch.manual_seed(seed)
    backbone = backbone_of(Path(run), random_init)
    data = QM9DataModule(targets=[target], train_size=train_size, eval_batch_size=256)
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    x_train, y_train = features(backbone, DataLoader(data.dataset("train"), batch_size=256))
    x_test, y_test = features(backbone, data.test_dataloader())
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    a, b = (x_train - mean) / std, (x_test - mean) / std
    gram = a.T @ a + ridge * len(a) * np.eye(a.shape[1])
    weights = np.linalg.solve(gram, a.T @ (y_train - y_train.mean()))
    mae = np.abs(b @ weights + y_train.mean() - y_test).mean()
    unit = data.target_info(target).unit
    scale, shown = (1000.0, "meV") if unit == "eV" else (1.0, unit)
    return {"mae": float(scale * mae), "unit": shown, "molecules": int(len(y_test))}
