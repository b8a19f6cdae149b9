"""Every shipped objective config with every shipped backbone config, through the ``zoo`` CLI, exactly as
shipped: only the budget is overridden (molecules, batch sizes, steps, validation batches) and the
logging switched off. A combination that fails for a user fails here. Each run then checks the
objective's own terms, not only that a loss came out:

* denoising: the collapse diagnostics of the pooled backbone features are logged;
* SCD: the backbone got its per-layer conditioning from the CLI (shipped backbone configs say
  ``condition_dim: 0``), ``val/loss_masked`` (mask token only) differs from ``val/loss``, drop-path 0.1;
* JEPA-EMA: EMA momentum on its cosine schedule from 0.996, the target encoder is not the online
  encoder, the masked context view (``mask_ratio`` 0.15 as shipped) works with this backbone;
* JEPA-SIGReg: the logged total is prediction + 0.1 x SIGReg;
* regression / fine-tuning: the HOMO MAE in meV; fine-tuning's auxiliary denoising and drop-path
  schedule (0.15 at the start) are active; the references' recipes (``finetune_*_recipe``): MSE in
  eV, sum pooling, their betas, and Zaidi et al.'s lr, weight decay, weight 0.1 and no drop-path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from atomzoo.cli import run

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = sorted(p.stem for p in (ROOT / "configs/objectives").glob("*.yaml"))
BACKBONES = sorted(p.stem for p in (ROOT / "configs/backbones").glob("*.yaml"))
SUPERVISED = {"regression", "finetune", "finetune_scd_recipe", "finetune_zaidi_recipe"}
#: objectives trained on time-ordered trajectories (windows of frames), not on single QM9 structures
TRAJECTORY = {"world_model"}
FIXTURE = ROOT / "tests/data/trajectories/xtb_qm9_md.extxyz"


def data_args(objective: str, cache_dir) -> list[str]:
    """The shipped data config an objective trains on, at a budget of seconds (an epoch of two batches,
    so that validation runs within the two steps)."""
    if objective in TRAJECTORY:
        return ["-c", str(ROOT / "configs/data/trajectories.yaml"), "--data.path", str(FIXTURE),
                "--data.cache_dir", str(cache_dir), "--data.batch_size", "8", "--data.eval_batch_size", "8",
                "--trainer.limit_train_batches", "2"]
    return ["-c", str(ROOT / "configs/data/qm9.yaml"), *([] if objective in SUPERVISED else ["--data.targets", "null"]),
            "--data.cache_dir", str(cache_dir), "--data.train_size", "16", "--data.batch_size", "8",
            "--data.eval_batch_size", "8"]
#: MACE at its shipped size (128x0e+128x1o, correlation 3) takes tens of seconds per run on 2 cores
SLOW = {"mace"}


def test_the_matrix_is_complete():
    assert {"denoising", "scd", "jepa", "jepa_sigreg", "regression", "finetune"} <= set(OBJECTIVES)
    assert {"schnet", "painn", "mace", "et"} <= set(BACKBONES)


@pytest.mark.parametrize(
    "backbone", [pytest.param(b, marks=pytest.mark.slow) if b in SLOW else b for b in BACKBONES]
)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_shipped_objective_with_shipped_backbone(objective, backbone, cache_dir, tmp_path, capsys):
    cli = run([
        "fit", *data_args(objective, cache_dir), "-c", str(ROOT / f"configs/objectives/{objective}.yaml"),
        "--model.backbone", str(ROOT / f"configs/backbones/{backbone}.yaml"),
        "--trainer.max_steps", "2", "--trainer.limit_val_batches", "2",
        "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false", "--trainer.callbacks", "[]",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(tmp_path),
    ])
    model, m = cli.model, {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert cli.trainer.global_step == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values()), m
    assert {"train/loss", "val/loss"} <= set(m)
    if objective not in SUPERVISED:
        assert {"train/emb_std", "train/emb_erank", "train/emb_sigreg"} <= set(m)
        assert m["train/emb_std"] > 0
    if objective == "scd":
        assert model.backbone.condition_dim > 0 and model.backbone.conditioning is not None
        assert "--model.backbone.init_args.condition_dim is unset" in capsys.readouterr().err
        assert m["val/loss_masked"] != m["val/loss"]
        assert m["train/drop_path"] == pytest.approx(0.1)  # the paper's pretraining drop-path
        if backbone == "et":
            assert all(layer.adaln is not None for layer in model.backbone.layers)
    if objective == "jepa":
        assert model.anti_collapse == "ema" and model.mask_ratio == pytest.approx(0.15)
        assert 0.996 <= m["train/ema_momentum"] <= 1.0
        online = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
        target = torch.cat([p.detach().flatten() for p in model.target_backbone.parameters()])
        assert online.shape == target.shape and not torch.equal(online, target)
        assert m["train/target_std"] > 0
    if objective == "jepa_sigreg":
        assert model.anti_collapse == "sigreg" and m["train/sigreg"] > 0
        assert m["train/loss"] == pytest.approx(m["train/pred_loss"] + 0.1 * m["train/sigreg"], rel=1e-4)
    if objective in SUPERVISED:
        assert m["val/homo_mae_meV"] > 0
    if objective in ("finetune", "finetune_scd_recipe"):
        assert "train/aux_denoising" in m
        assert m["train/drop_path"] == pytest.approx(0.15, abs=1e-3)
    if objective.endswith("_recipe"):  # the references' recipes: MSE in eV, sum pooling (their headers)
        assert model.loss_name == "mse" and not model.standardize_loss and bool(model.sum_pooled.all())
        assert model.betas == ((0.995, 0.999) if objective == "finetune_scd_recipe" else (0.9, 0.999))
    if objective == "finetune_zaidi_recipe":
        assert "train/aux_denoising" in m and model.aux_denoising_weight == pytest.approx(0.1)
        assert m["train/drop_path"] == 0.0 and model.lr == pytest.approx(4e-4) and model.weight_decay == 0.0
