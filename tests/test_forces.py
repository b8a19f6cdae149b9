"""Energy + force regression (forces = -dE/dpos) on the committed GFN2-xTB ethanol fixture."""

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from atomzoo.backbones import SchNet
from atomzoo.datamodules import RMD17DataModule
from atomzoo.objectives import Regression

FIXTURE = Path(__file__).parent / "data" / "md17_fixture"


def make_dm(cache_dir, **kw):
    args = dict(root=str(FIXTURE), molecule="ethanol", cache_dir=str(cache_dir), num_train=300, num_val=50,
                batch_size=10, eval_batch_size=50)  # fmt: skip
    args.update(kw)
    return RMD17DataModule(**args)


def small_model(**kw):
    torch.manual_seed(0)
    backbone = SchNet(width=32, num_filters=32, num_interactions=2, num_rbf=20, cutoff=5.0)
    kw = {"lr": 5e-3, "force_weight": 100.0, "warmup_steps": 20, **kw}
    return Regression(backbone, targets=["energy"], forces=True, **kw)


def test_forces_are_minus_energy_gradient(cache_dir):
    dm = make_dm(cache_dir)
    dm.setup()
    model = small_model()
    batch = next(iter(dm.val_dataloader()))
    model.fit_statistics(dm.targets_info(), dm.training_labels(), dm.training_element_counts(100))
    # under inference mode (Lightning's default evaluation), forces still come out
    with torch.inference_mode():
        forces = model.predict_properties(batch)["forces"]
    assert forces.shape == batch.pos.shape and torch.isfinite(forces).all()
    # finite-difference check of one component: F = -dE/dx
    atom, axis, h = 3, 1, 1e-3
    model = model.double()
    b = batch.clone()
    b.pos = b.pos.double()
    f64 = model.predict_properties(b)["forces"]
    e = []
    for sign in (1, -1):
        c = b.clone()
        c.pos[atom, axis] += sign * h
        with torch.no_grad():
            e.append(model(c)[:, 0].sum().item())
    assert -(e[0] - e[1]) / (2 * h) == pytest.approx(f64[atom, axis].item(), rel=1e-4, abs=1e-6)


def test_forces_need_energy_target():
    backbone = SchNet(width=16, num_filters=16, num_interactions=1, num_rbf=8, cutoff=4.0)
    with pytest.raises(ValueError, match="energy"):
        Regression(backbone, targets=["homo"], forces=True)


@pytest.mark.slow
def test_energy_force_training_learns_forces(cache_dir):
    """150 steps: 26 s on the 2-core VM at load average 4.5 (marked slow: the longest test of this file);
    measured force MAE 314 meV/A = 0.26 x the force std (see docs/datasets.md)."""
    dm = make_dm(cache_dir)
    model = small_model()
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, max_steps=150, check_val_every_n_epoch=5,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", gradient_clip_val=10.0,
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)  # default inference_mode=True in validation
    result = trainer.test(model, datamodule=dm, verbose=False)[0]
    forces = np.asarray(dm.store.arrays["forces"], dtype=np.float64)
    force_std_mev = forces.std() * 1000
    mae = result["test/forces_mae_meV_per_A"]
    print(f"force MAE {mae:.1f} meV/A vs force std {force_std_mev:.1f} meV/A; energy MAE {result['test/energy_mae_meV']:.1f} meV")
    assert mae < 0.5 * force_std_mev
