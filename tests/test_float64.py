"""float64 end to end (issue 19, item 6): every backbone trains and evaluates with energies and
forces under ``precision="64-true"`` -- positions, node attributes, features, heads and forces in
float64 (the MACE bad input crashed with "both inputs should have same dtype")."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from atomzoo.backbones import MACE, PaiNN, SchNet
from atomzoo.datamodules import ASEFileDataModule
from atomzoo.objectives import Regression

DATA = Path(__file__).parent / "data" / "bad_inputs" / "mace-float64" / "data.extxyz"
BACKBONES = {
    "schnet": lambda: SchNet(width=8, num_filters=8, num_interactions=1, num_rbf=8),
    "painn": lambda: PaiNN(width=8, num_interactions=1, num_rbf=8),
    "mace": lambda: MACE(hidden_irreps="8x0e+8x1o", max_ell=1, correlation=2, num_interactions=1, radial_MLP=[8],
                         atomic_numbers=[1, 6, 7, 8, 9], dtype="float64"),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_trains_and_evaluates_in_float64(name, tmp_path):
    data = ASEFileDataModule(path=str(DATA), cache_dir=str(tmp_path / "cache"), num_train=0.6, num_val=0.2,
                             batch_size=4, eval_batch_size=8, allow_unseen_elements=True)  # fmt: skip
    model = Regression(BACKBONES[name](), targets=["energy"], forces=True, warmup_steps=1)
    seen = []
    model.backbone.register_forward_hook(lambda m, args, out: seen.append((args[0].pos.dtype, out.scalars.dtype)))
    trainer = L.Trainer(precision="64-true", max_steps=2, limit_val_batches=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(model, datamodule=data)
    metrics = trainer.test(model, datamodule=data, verbose=False)[0]
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert seen and all(d == (torch.float64, torch.float64) for d in seen)
    assert torch.isfinite(torch.tensor(metrics["test/loss"])) and metrics["test/forces_mae_meV_per_A"] > 0
    batch = next(iter(data.test_dataloader()))
    batch = data.on_after_batch_transfer(batch, 0)
    out = model.predict_properties(batch)
    energy, forces = out["targets"], out["forces"]
    assert energy.dtype == torch.float64 and forces.dtype == torch.float64 and batch.y.dtype == torch.float64
